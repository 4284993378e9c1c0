//! Starting a node binary for a measurement, and the bare endpoint.

use std::convert::Infallible;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub struct SpawnedNode {
    pub child: Child,
    pub addr: SocketAddr,
    /// The command, to start it again on the same data.
    program: PathBuf,
    args: Vec<OsString>,
    dir: tempfile::TempDir,
}

impl Drop for SpawnedNode {
    fn drop(&mut self) {
        // Graceful stop so the node drains; fall back to kill.
        if self.terminate(std::time::Duration::from_secs(6)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl SpawnedNode {
    /// The temporary directory the node's data (`data/`) and config live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The program this node runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// SIGKILL: the process ends at once, whatever it was doing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same command again, on the same data directory (after
    /// [`SpawnedNode::kill`]); its new address is in `addr`.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let (child, addr) = launch(&self.program, &self.args)?;
        self.child = child;
        self.addr = addr;
        Ok(())
    }

    /// Sends SIGTERM and waits up to `within` for the node to exit: how
    /// long it took (zero if it had exited already), `None` if it did not.
    pub fn terminate(&mut self, within: std::time::Duration) -> Option<std::time::Duration> {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Some(std::time::Duration::ZERO);
        }
        let started = std::time::Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        while started.elapsed() < within {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }
}

/// The development node's tenant, tokens and agent without its flow: the
/// runs that measure ingest, timers and outbound sends measure the runtime,
/// not the bot's replies (the dev node itself runs the dental example).
const DEV_WITHOUT_FLOW: &str = r#"
[server]
admin_token = "dev-admin-token"

[[tenants]]
id = "demo"
name = "Demo Business"
timezone = "America/New_York"
sms_numbers = ["+15550000100"]
owner_phone = "+15550000199"
help_text = "Demo Business: reply STOP to opt out."
gateway_token = "gw-demo"

[[agents]]
id = "demo-agent"
name = "Demo Agent"
token = "agent-demo"
tenants = ["demo"]
skills = ["en"]
capacity = { chat = 3, voice = 1 }
"#;

/// Starts `bin serve` with the development node's settings, without its
/// flow, on a free port with a fresh data dir.
pub fn spawn(bin: &Path, extra: &[String]) -> anyhow::Result<SpawnedNode> {
    spawn_with_config(bin, DEV_WITHOUT_FLOW, extra)
}

/// Starts `bin serve --config` with `config` written to a fresh data dir.
pub fn spawn_with_config(
    bin: &Path,
    config: &str,
    extra: &[String],
) -> anyhow::Result<SpawnedNode> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("threadline.toml");
    std::fs::write(&file, config)?;
    serve_in(bin, dir, Some(file), extra)
}

/// `bin serve [--config FILE]` on a free port, its data in `dir/data`.
fn serve_in(
    bin: &Path,
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
    extra: &[String],
) -> anyhow::Result<SpawnedNode> {
    let mut args: Vec<OsString> = vec!["serve".into()];
    if let Some(file) = config {
        args.extend(["--config".into(), file.into()]);
    }
    args.extend(["--http", "127.0.0.1:0", "--data-dir"].map(OsString::from));
    args.push(dir.path().join("data").into());
    args.extend(extra.iter().map(OsString::from));
    start(bin.to_owned(), args, dir)
}

/// Starts this program's bare endpoint as a separate process, so it pays
/// the same cross-process costs as the node it is compared with.
pub fn spawn_bare() -> anyhow::Result<SpawnedNode> {
    start(
        std::env::current_exe()?,
        vec!["bare-server".into()],
        tempfile::tempdir()?,
    )
}

fn start(
    program: PathBuf,
    args: Vec<OsString>,
    dir: tempfile::TempDir,
) -> anyhow::Result<SpawnedNode> {
    let (child, addr) = launch(&program, &args)?;
    Ok(SpawnedNode {
        child,
        addr,
        program,
        args,
        dir,
    })
}

/// Runs `program args` and waits until it says where it listens.
fn launch(program: &Path, args: &[OsString]) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = Command::new(program)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("LOADTEST_NODE_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start the node {}: {e} (build it with `cargo build --release`, or name it with --node)",
                program.display()
            )
        })?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(a) = l.strip_prefix("threadline listening on http://") {
                    break a.trim().parse()?;
                }
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("the node exited before listening")
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

/// A bare hyper HTTP/1.1 endpoint that reads the body and answers 202 with a
/// small JSON body: what the node's HTTP layer costs with no work behind it.
/// Prints its address like the node does, then serves until killed.
pub async fn serve_bare() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("threadline listening on http://{}", listener.local_addr()?);
    serve_http(listener, |req| async move {
        let _ = req.into_body().collect().await;
        let mut r = Response::new(Full::new(Bytes::from_static(
            br#"{"conversation_id":"cnv_0000000000000001","message_id":"msg_0000000000000001_2","duplicate":false}"#,
        )));
        *r.status_mut() = hyper::StatusCode::ACCEPTED;
        r
    })
    .await;
    Ok(())
}

/// Serves HTTP/1.1 on `listener` with `handle`, one task per connection,
/// until the process ends.
pub async fn serve_http<F, Fut>(listener: tokio::net::TcpListener, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
