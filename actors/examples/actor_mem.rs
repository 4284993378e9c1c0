//! Measures what one idle ractor actor with the conversation message type
//! costs in resident memory, the floor under a resident conversation:
//! `cargo run --release -p threadline-actors --example actor_mem`.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use threadline_actors::conversation::ConvMsg;
struct A;
impl Actor for A {
    type Msg = ConvMsg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _m: ActorRef<ConvMsg>, _a: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        _m: ActorRef<ConvMsg>,
        msg: ConvMsg,
        _s: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let ConvMsg::View { reply } = msg {
            let _ = reply.send(Ok(None));
        }
        Ok(())
    }
}
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = 100_000;
    let base = threadline_actors::metrics::resident_memory_bytes();
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Actor::spawn(None, A, ()).await.unwrap().0);
    }
    let idle = threadline_actors::metrics::resident_memory_bytes();
    for a in &v {
        let (tx, rx) = tokio::sync::oneshot::channel();
        a.cast(ConvMsg::View { reply: tx }).unwrap();
        let _ = rx.await;
    }
    let used = threadline_actors::metrics::resident_memory_bytes();
    println!(
        "size_of ConvMsg {}; idle actor {} B; after one message {} B",
        std::mem::size_of::<ConvMsg>(),
        (idle - base) / n,
        (used - base) / n
    );
}
