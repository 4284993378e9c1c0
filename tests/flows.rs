//! End-to-end journeys with the shipped example flows, the real binary,
//! a fake Twilio server and simulated time.
//!
//! Over 800 lines on purpose: every file under `tests/` is its own test
//! binary, linked against the whole node, and the tests here share one
//! harness (node configs, waits, fake providers); one file per area keeps
//! CI's link time and that harness in one place. Each test reads alone.

mod common;

use std::time::Duration;

use common::fake_provider::{FakeTwilio, SID, TOKEN};
use common::webhooks::PUBLIC_URL;
use common::ws::*;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

// Tuesday 2026-03-03, 10:00 in New York.
const NOW: &str = "2026-03-03T15:00:00Z";
const JORDAN: &str = "+15551230001";

fn config(twilio: &str) -> String {
    let flows = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/flows");
    format!(
        r#"
[server]
admin_token = "test-admin-token"
public_url = "{PUBLIC_URL}"

[runtime]
agent_wait_text = "Everyone is busy; you are number {{position}} in line."

[providers]
retry_base_ms = 10

[providers.twilio]
account_sid = "{SID}"
auth_token = "{TOKEN}"
api_base = "{twilio}"

[[tenants]]
id = "smile"
name = "Bright Smile Dental"
timezone = "America/New_York"
sms_numbers = ["+15557654321"]
gateway_token = "gw-smile"
flow = "{flows}/dental.toml"

[[tenants]]
id = "harbor"
name = "Harbor Insurance"
timezone = "America/New_York"
sms_numbers = ["+15557650000"]
gateway_token = "gw-harbor"
flow = "{flows}/insurance.toml"

[[agents]]
id = "sarah"
name = "Sarah"
token = "agent-sarah"
tenants = ["harbor"]
"#
    )
}

/// A node running both example flows on simulated time, its texts going
/// to a fake Twilio.
async fn start() -> (FakeTwilio, Node) {
    let fake = FakeTwilio::start().await;
    let node = Node::start_with_config(&config(&fake.base), &["--simulated-clock", NOW]);
    (fake, node)
}

async fn say(node: &Node, tenant: &str, channel: &str, from: &str, text: &str, pid: &str) {
    let mut m = sms(tenant, from, text, Some(pid));
    m["channel"] = json!(channel);
    let (s, v) = node.inbound(&format!("gw-{tenant}"), &m).await;
    assert_eq!(s, 202, "{v}");
}

/// The bot's last message to `who`.
async fn bot_said(node: &Node, tenant: &str, who: &str) -> String {
    let c = node.conversation_of(tenant, who).await.unwrap();
    texts_where(&c, "author", "bot")
        .last()
        .cloned()
        .unwrap_or_default()
}

async fn texted(fake: &FakeTwilio, pred: impl Fn(&str) -> bool) -> String {
    for _ in 0..500 {
        if let Some(b) = fake.accepted_bodies().into_iter().find(|b| pred(b)) {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no such text reached the fake Twilio: {:?}",
        fake.accepted_bodies()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_books_confirms_gets_reminders_and_reschedules_in_one_thread() {
    let (fake, node) = start().await;
    say(
        &node,
        "smile",
        "sms",
        JORDAN,
        "Hi, this is Jordan. I need a cleaning",
        "j1",
    )
    .await;
    assert_eq!(
        bot_said(&node, "smile", JORDAN).await,
        "What day and time work best for you?"
    );
    say(&node, "smile", "sms", JORDAN, "Thursday at 3", "j2").await;
    let offer = bot_said(&node, "smile", JORDAN).await;
    assert_eq!(
        offer,
        "Great! I can do Thu Mar 5 at 3:00 PM for your cleaning. Reply C to confirm or R for another time."
    );
    // The reply went out over SMS, through the gate.
    texted(&fake, |b| b == offer).await;
    say(&node, "smile", "sms", JORDAN, "C", "j3").await;
    assert!(bot_said(&node, "smile", JORDAN)
        .await
        .starts_with("You're confirmed for Thu Mar 5 at 3:00 PM"));
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    assert_eq!(c["captured"]["name"], "Jordan");
    assert_eq!(c["captured"]["intent"], "book");
    assert_eq!(c["booking"]["status"], "confirmed");
    assert_eq!(c["captured"]["slots"]["service"], "cleaning");

    // A second customer asks for the same time: the nearest opening
    // instead, and the nearest on the other side as an option.
    say(
        &node,
        "smile",
        "webchat",
        "visitor-7",
        "can I book a checkup thursday at 3pm",
        "v1",
    )
    .await;
    let other = bot_said(&node, "smile", "visitor-7").await;
    assert!(
        other.starts_with(
            "Thu Mar 5 at 3:00 PM isn't available, but 2:00 PM is free too if that suits you better. I can do Thu Mar 5 at 4:00 PM"
        ),
        "{other}"
    );

    // Reminders at 24 h and 2 h before (Wed 15:00 and Thu 13:00 local).
    node.advance(29.0 * 3600.0).await; // Wed 15:00 EST
    texted(&fake, |b| {
        b.starts_with("Reminder from Bright Smile Dental: your cleaning is Thu Mar 5 at 3:00 PM")
    })
    .await;
    node.advance(22.0 * 3600.0).await; // Thu 13:00 EST
    let mut reminders = Vec::new();
    for _ in 0..500 {
        reminders = fake
            .accepted_bodies()
            .into_iter()
            .filter(|b| b.starts_with("Reminder from"))
            .collect();
        if reminders.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reminders.len(), 2, "{reminders:?}");

    // The customer moves it, in the same thread.
    say(
        &node,
        "smile",
        "sms",
        JORDAN,
        "R - could we do Friday at 10am instead?",
        "j4",
    )
    .await;
    let moved = bot_said(&node, "smile", JORDAN).await;
    assert!(moved.contains("Fri Mar 6 at 10:00 AM"), "{moved}");
    say(&node, "smile", "sms", JORDAN, "yes", "j5").await;
    let moved = bot_said(&node, "smile", JORDAN).await;
    assert!(
        moved.starts_with(
            "Done: your appointment is moved from Thu Mar 5 at 3:00 PM to Fri Mar 6 at 10:00 AM"
        ),
        "{moved}"
    );
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    assert_eq!(c["channels"], json!(["sms"]));
    let customer = texts_where(&c, "author", "customer");
    assert_eq!(customer.len(), 5, "one thread: {customer:?}");

    // The tenant's outcomes, over REST and Prometheus.
    let (s, m) = node.get_admin("/api/v1/tenants/smile/metrics").await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["bookings"]["confirmed"], 2, "{m}");
    assert_eq!(m["bookings"]["rescheduled"], 1, "{m}");
    assert_eq!(m["bookings"]["offered"], 3, "{m}");
    assert_eq!(m["first_response"]["conversations"], 2, "{m}");
    assert_eq!(
        m["first_response"]["mean_ms"], 0.0,
        "answers come in the same instant of simulated time"
    );
    assert_eq!(
        node.metric("threadline_bookings_confirmed_total{tenant=\"smile\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qualified_lead_reaches_an_agent_with_what_was_captured() {
    let (_fake, node) = start().await;
    let url = node
        .url("/agent/ws?token=agent-sarah")
        .replace("http://", "ws://");
    let (mut sarah, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut sarah).await["type"], "hello");
    send_json(&mut sarah, json!({"type": "status", "status": "available"})).await;
    next_of(&mut sarah, "status").await;
    let lead = "visitor-lead";
    for (i, text) in [
        "Hi, I'd like a quote to bundle home and auto",
        "Jordan Lee",
        "next month, we move on the 1st",
        "around 200 a month",
    ]
    .iter()
    .enumerate()
    {
        say(&node, "harbor", "webchat", lead, text, &format!("l{i}")).await;
    }
    // Hot (80 of 100 points) before the last question: handed over now.
    let c = node.conversation_of("harbor", lead).await.unwrap();
    assert_eq!(c["captured"]["score"], 80.0, "{c}");
    assert_eq!(
        bot_said(&node, "harbor", lead).await,
        "Will anyone else be part of the decision?"
    );
    say(&node, "harbor", "webchat", lead, "just me", "l9").await;
    assert_eq!(
        bot_said(&node, "harbor", lead).await,
        "Thanks Jordan Lee! A licensed agent will reach out shortly about your bundle quote."
    );
    let offer = next_of(&mut sarah, "offer").await;
    let slots: Value = offer["summary"]["slots"].clone();
    assert_eq!(slots["coverage"], "bundle");
    assert_eq!(slots["budget"], "around 200 a month");
    assert_eq!(offer["summary"]["name"], "Jordan Lee");
    // The agent takes it: the qualified lead met a person.
    send_json(
        &mut sarah,
        json!({"type": "accept", "offer_id": offer["offer_id"]}),
    )
    .await;
    next_of(&mut sarah, "assigned").await;
    let (_, m) = node.get_admin("/api/v1/tenants/harbor/metrics").await;
    assert_eq!(
        m["leads"],
        json!({"qualified": 1, "met": 1, "lead_to_meeting_rate": 1.0}),
        "{m}"
    );
    // Flows reload without a restart.
    let (s, v) = node
        .send_admin(Method::POST, "/api/v1/flows/reload", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["reloaded"], json!(["harbor", "smile"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_responder_phrases_replies_and_a_slow_one_falls_back_unnoticed() {
    use common::fake_provider::{FakeResponder, RESPONDER_KEY};
    let fake = FakeTwilio::start().await;
    let llm = FakeResponder::start().await;
    *llm.answer.lock().unwrap() =
        "Hi there! Ava here - we're open Monday to Friday, 9 to 5.".into();
    let dir = tempfile::tempdir().unwrap();
    let flow = dir.path().join("dental-llm.toml");
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/flows/dental.toml"
    ))
    .unwrap();
    std::fs::write(
        &flow,
        format!(
            "{base}\n[responder]\nurl = \"{}\"\nmodel = \"test-model\"\napi_key = \"{RESPONDER_KEY}\"\ntimeout_ms = 300\n",
            llm.url
        ),
    )
    .unwrap();
    let cfg = config(&fake.base).replace(
        &format!("{}/examples/flows/dental.toml", env!("CARGO_MANIFEST_DIR")),
        flow.to_str().unwrap(),
    );
    let node = Node::start_with_config(&cfg, &["--simulated-clock", NOW]);
    say(
        &node,
        "smile",
        "sms",
        JORDAN,
        "Hi, this is Jordan. When are you open?",
        "r1",
    )
    .await;
    let said = wait_bot(&node, "smile", JORDAN, 1).await;
    assert_eq!(
        said,
        "Hi there! Ava here - we're open Monday to Friday, 9 to 5."
    );
    texted(&fake, |b| b == said).await;
    let req = llm.requests.lock().unwrap()[0].clone();
    assert_eq!(req["model"], "test-model");
    let system = req["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("You are Ava"), "{system}");
    assert!(
        system.contains("name: Jordan"),
        "the captured facts go along: {system}"
    );
    assert!(
        system.contains("We're open Monday to Friday, 9am to 5pm"),
        "the draft: {system}"
    );
    assert_eq!(
        req["messages"][1]["content"],
        "Hi, this is Jordan. When are you open?"
    );

    // Slower than the timeout: the built-in reply goes out instead.
    *llm.delay.lock().unwrap() = Duration::from_secs(3);
    say(
        &node,
        "smile",
        "sms",
        JORDAN,
        "and where are you located?",
        "r2",
    )
    .await;
    let said = wait_bot(&node, "smile", JORDAN, 2).await;
    assert_eq!(
        said,
        "We're at 12 Main Street, with free parking behind the building."
    );
}

/// Waits for the bot's `n`th message to `who` (replies phrased elsewhere
/// arrive after the inbound's acknowledgment).
async fn wait_bot(node: &Node, tenant: &str, who: &str, n: usize) -> String {
    for _ in 0..500 {
        let c = node.conversation_of(tenant, who).await.unwrap();
        let bot = texts_where(&c, "author", "bot");
        if bot.len() >= n {
            return bot[n - 1].clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the bot never said a {n}th thing");
}

/// A node whose `harbor` tenant calls a lead as soon as it scores 70.
fn lead_calling_node(fake: &FakeTwilio, dir: &std::path::Path) -> Node {
    lead_calling_node_with(fake, dir, "")
}

/// `lead_calling_node`, its flow followed by `more`.
fn lead_calling_node_with(fake: &FakeTwilio, dir: &std::path::Path, more: &str) -> Node {
    let flow = dir.join("leads.toml");
    std::fs::write(
        &flow,
        r#"
persona = { name = "Max" }
[[intents]]
name = "quote"
examples = ["I want a quote"]
keywords = ["quote", "insurance", "bundle"]
journey = "qualify"
[journeys.qualify]
done = "Thanks {name}!"
slots = [
  { name = "coverage", ask = "What would you like to cover?", kind = "choice", options = ["home", "auto", "bundle"] },
  { name = "timeline", ask = "When do you need it to start?" },
  { name = "name", ask = "And your name?", kind = "name" },
]
[scoring]
threshold = 70
handoff = "call"
call_greeting = "Hi {name}, this is {persona} from Harbor Insurance, calling about the {coverage} quote you asked for {via}."
rules = [
  { slot = "intent", contains = ["quote"], points = 10 },
  { slot = "coverage", contains = ["bundle"], points = 20 },
  { slot = "timeline", contains = ["asap", "this week", "next week", "this month", "next month"], points = 30 },
  { slot = "name", points = 10 },
]
"#
        .to_owned()
            + more,
    )
    .unwrap();
    let cfg = config(&fake.base).replace(
        &format!(
            "{}/examples/flows/insurance.toml",
            env!("CARGO_MANIFEST_DIR")
        ),
        flow.to_str().unwrap(),
    );
    Node::start_with_config(&cfg, &["--simulated-clock", NOW])
}

/// Jordan answers the lead flow's questions by text, to a score of 70
/// (the threshold).
async fn qualify(node: &Node) {
    for (i, text) in [
        "I want a quote to bundle home and auto",
        "next month",
        "I'm Jordan",
    ]
    .iter()
    .enumerate()
    {
        say(node, "harbor", "sms", JORDAN, text, &format!("q{i}")).await;
    }
}

/// How many calls the fake Twilio was asked to place.
fn calls_placed(fake: &FakeTwilio) -> usize {
    fake.state
        .lock()
        .unwrap()
        .accepted
        .iter()
        .filter(|(_, f)| f["_resource"] == "Calls")
        .count()
}

/// The call the fake Twilio was asked to place.
async fn placed_call(fake: &FakeTwilio) -> Option<std::collections::HashMap<String, String>> {
    for _ in 0..500 {
        let call = fake
            .state
            .lock()
            .unwrap()
            .accepted
            .iter()
            .find(|(_, f)| f["_resource"] == "Calls")
            .map(|(_, f)| f.clone());
        if call.is_some() {
            return call;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_above_the_threshold_gets_a_call_whose_greeting_continues_the_thread() {
    let fake = FakeTwilio::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = lead_calling_node(&fake, dir.path());
    qualify(&node).await;
    let c = node.conversation_of("harbor", JORDAN).await.unwrap();
    assert_eq!(c["captured"]["score"], 70.0, "{c}");
    assert_eq!(c["journey"]["handoff"], "qualified");
    // One channel at a time: the text reply goes first, the call it
    // announces half a minute later (before, both left together).
    assert_eq!(bot_said(&node, "harbor", JORDAN).await, "Thanks Jordan!");
    assert!(texts_where(&c, "channel", "voice").is_empty(), "{c}");
    assert_eq!(calls_placed(&fake), 0);
    node.advance(30.0).await;
    // The call goes to the Twilio Calls API, and says the greeting.
    let call = placed_call(&fake)
        .await
        .unwrap_or_else(|| panic!("no call was placed: {c}"));
    assert_eq!(call["To"], JORDAN);
    let c = node.conversation_of("harbor", JORDAN).await.unwrap();
    let voice = texts_where(&c, "channel", "voice");
    assert_eq!(
        voice,
        vec!["Hi Jordan, this is Max from Harbor Insurance, calling about the bundle quote you asked for by text."]
    );
}

/// The lead call converses: after its greeting, Jordan asks for a meeting
/// by speech, hears the time offered in words for the ear, and books it
/// with a key, on the call the runtime placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_call_converses_and_books_a_meeting() {
    let fake = FakeTwilio::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = lead_calling_node_with(
        &fake,
        dir.path(),
        r#"
[[intents]]
name = "meet"
examples = ["can we set up a call", "I'd like to meet an agent"]
keywords = ["meet", "meeting", "appointment", "talk to an agent"]
journey = "meeting"
[journeys.meeting]
booking = true
done = "I can do {when} with one of our agents. Reply C to confirm or R for another time."
slots = [
  { name = "when", ask = "What day and time suit you?", kind = "datetime" },
]
[calendar]
days = ["mon", "tue", "wed", "thu", "fri"]
open = "09:00"
close = "17:00"
slot_minutes = 30
"#,
    );
    qualify(&node).await;
    node.advance(30.0).await;
    let call = placed_call(&fake).await.expect("the lead is called");
    assert_eq!(call["To"], JORDAN);
    // Twilio fetches what to say once Jordan (a person) answers.
    let answered = call["Url"]
        .strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("{}", call["Url"]))
        .to_owned();
    let from = call["From"].clone();
    let step = |path: String, speech: &'static str, digits: &'static str| {
        let (node, from) = (&node, from.clone());
        async move {
            let mut p = vec![
                ("CallSid", "CA-lead".to_owned()),
                ("AccountSid", SID.to_owned()),
                ("From", from),
                ("To", JORDAN.to_owned()),
                ("CallStatus", "in-progress".to_owned()),
                ("Direction", "outbound-api".to_owned()),
                ("AnsweredBy", "human".to_owned()),
            ];
            if !speech.is_empty() {
                p.push(("SpeechResult", speech.to_owned()));
                p.push(("Confidence", "0.9".to_owned()));
            }
            if !digits.is_empty() {
                p.push(("Digits", digits.to_owned()));
            }
            let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (s, twiml) = node.twilio(TOKEN, &path, &p).await;
            assert_eq!(s, 200, "{twiml}");
            heard(&twiml)
        }
    };
    let (said, next) = step(answered, "", "").await;
    assert!(
        said.starts_with("Hi Jordan, this is Max from Harbor Insurance"),
        "{said}"
    );
    let (said, next) = step(
        next.expect("the call listens after its greeting"),
        "yes can we set up a meeting thursday at 3pm",
        "",
    )
    .await;
    assert!(said.contains("Thu Mar 5 at 3:00 PM"), "{said}");
    assert!(said.contains("Say yes or press 1 to confirm"), "{said}");
    let (said, _) = step(next.expect("it listens for the answer"), "", "1").await;
    assert!(
        said.starts_with("You're confirmed for Thu Mar 5 at 3:00 PM"),
        "{said}"
    );
    let c = node.conversation_of("harbor", JORDAN).await.unwrap();
    assert_eq!(c["booking"]["status"], "confirmed", "{}", c["booking"]);
    assert_eq!(c["booking"]["start"], "2026-03-05T20:00:00.000Z");
    // One call was placed, and nothing else rang.
    assert_eq!(calls_placed(&fake), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_chat_lead_who_gives_a_number_gets_a_call_that_cites_the_chat() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as Frame;
    let fake = FakeTwilio::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = lead_calling_node(&fake, dir.path());
    let url = node
        .url("/chat/ws?tenant=harbor")
        .replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    let mut bot = Vec::new();
    for (i, text) in [
        "I want a quote to bundle home and auto",
        "sure, my cell is (555) 123-0001",
        "next month",
        "I'm Jordan",
    ]
    .iter()
    .enumerate()
    {
        ws.send(Frame::text(
            json!({"type": "message", "text": text, "id": format!("w{i}")}).to_string(),
        ))
        .await
        .unwrap();
        // The ack, the bot's answer (and the link) may come in any order.
        let mut want = vec!["ack", "message"];
        if i == 1 {
            want.push("code_sent");
        }
        while !want.is_empty() {
            let f = next_json(&mut ws).await;
            let kind = f["type"].as_str().unwrap_or("").to_owned();
            match kind.as_str() {
                "ack" => assert_eq!(f["id"], format!("w{i}")),
                "code_sent" => assert_eq!(f["phone"], JORDAN),
                "message" if f["author"] == "bot" => bot.push(f["text"].clone()),
                _ => continue,
            }
            want.retain(|w| *w != kind);
        }
        if i == 1 {
            // The number is the visitor's once they send back its code.
            let code = common::chat_code(&node, "harbor", JORDAN).await;
            ws.send(Frame::text(
                json!({"type": "verify", "code": code}).to_string(),
            ))
            .await
            .unwrap();
            loop {
                let f = next_json(&mut ws).await;
                if f["type"] == "linked" {
                    assert_eq!(f["phone"], JORDAN);
                    break;
                }
            }
        }
    }
    // The chat went on in the phone's conversation, and the bot answered
    // in the chat all along.
    assert_eq!(bot[2], "And your name?", "{bot:?}");
    let c = node.conversation_of("harbor", JORDAN).await.unwrap();
    assert_eq!(c["captured"]["score"], 70.0, "{c}");
    assert_eq!(c["captured"]["slots"]["coverage"], "bundle");
    node.advance(30.0).await;
    let call = placed_call(&fake)
        .await
        .unwrap_or_else(|| panic!("no call was placed: {c}"));
    assert_eq!(call["To"], JORDAN);
    let c = node.conversation_of("harbor", JORDAN).await.unwrap();
    assert_eq!(
        texts_where(&c, "channel", "voice"),
        vec!["Hi Jordan, this is Max from Harbor Insurance, calling about the bundle quote you asked for in our website chat."]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_call_to_booking_to_reminders_to_a_whatsapp_reschedule_is_one_thread() {
    use common::fake_provider::{FakeWhatsapp, WA_PHONE_ID, WA_TOKEN};
    use common::webhooks::PUBLIC_URL;
    let fake = FakeTwilio::start().await;
    let wa = FakeWhatsapp::start().await;
    let flows = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/flows");
    let cfg = format!(
        r#"
[server]
admin_token = "test-admin-token"
public_url = "{PUBLIC_URL}"

[providers]
retry_base_ms = 10

[providers.twilio]
account_sid = "{SID}"
auth_token = "{TOKEN}"
api_base = "{}"

[providers.whatsapp]
app_secret = "test_app_secret"
verify_token = "verify-me"
access_token = "{WA_TOKEN}"
api_base = "{}"

[[tenants]]
id = "smile"
name = "Bright Smile Dental"
timezone = "America/New_York"
sms_numbers = ["+15557654321"]
whatsapp_phone_number_id = "{WA_PHONE_ID}"
gateway_token = "gw-smile"
missed_call_text = "Sorry we missed your call at Bright Smile! Reply here to book or ask anything."
flow = "{flows}/dental.toml"
"#,
        fake.base, wa.base
    );
    let node = Node::start_with_config(&cfg, &["--simulated-clock", NOW]);
    // A call nobody can take (no owner phone): a missed call, and a text.
    let call = [
        ("CallSid", "CA1"),
        ("AccountSid", SID),
        ("From", JORDAN),
        ("To", "+15557654321"),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
    ];
    let (s, twiml) = node.twilio(TOKEN, "/webhooks/twilio/voice", &call).await;
    assert_eq!(s, 200, "{twiml}");
    texted(&fake, |b| {
        b.starts_with("Sorry we missed your call at Bright Smile!")
    })
    .await;
    // The customer answers the text and books.
    say(&node, "smile", "sms", JORDAN, "Hi! I need a cleaning", "s1").await;
    say(&node, "smile", "sms", JORDAN, "Thursday at 3", "s2").await;
    say(&node, "smile", "sms", JORDAN, "C", "s3").await;
    assert!(bot_said(&node, "smile", JORDAN)
        .await
        .starts_with("You're confirmed for Thu Mar 5 at 3:00 PM"));
    // Reminders 24 h and 2 h before.
    node.advance(29.0 * 3600.0).await;
    node.advance(22.0 * 3600.0).await;
    for _ in 0..500 {
        if fake
            .accepted_bodies()
            .iter()
            .filter(|b| b.starts_with("Reminder from"))
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fake.accepted_bodies()
            .iter()
            .filter(|b| b.starts_with("Reminder from"))
            .count(),
        2
    );
    // Rescheduled over WhatsApp: the answer goes out on WhatsApp.
    say(
        &node,
        "smile",
        "whatsapp",
        JORDAN,
        "R - could we do Friday at 10am instead?",
        "w1",
    )
    .await;
    let mut answered = None;
    for _ in 0..500 {
        answered = wa
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v["text"]["body"].as_str().unwrap_or("").to_owned())
            .find(|b| b.contains("Fri Mar 6 at 10:00 AM"));
        if answered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        answered.is_some(),
        "the WhatsApp answer: {:?}",
        wa.sent.lock().unwrap()
    );
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    assert_eq!(
        c["channels"],
        json!(["voice", "sms", "whatsapp"]),
        "one thread: {c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_customer_gets_a_text_then_a_call_and_nothing_after_they_answer() {
    let (fake, node) = start().await;
    say(
        &node,
        "smile",
        "sms",
        JORDAN,
        "Hi, I'm Dana. I'd like to book a cleaning",
        "d1",
    )
    .await;
    assert_eq!(
        bot_said(&node, "smile", JORDAN).await,
        "What day and time work best for you?"
    );
    node.advance(2.0 * 3600.0).await;
    texted(&fake, |b| {
        b == "Just checking in: What day and time work best for you?"
    })
    .await;
    node.advance(24.0 * 3600.0).await;
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    let calls = texts_where(&c, "channel", "voice");
    assert_eq!(
        calls,
        vec!["Hi Dana, this is Ava from Bright Smile Dental about booking your visit. Reply to our text whenever it suits you."],
        "the second step is a call"
    );
    // The customer answers: that cadence stops; the new question (the
    // offer, waiting for C or R) has its own first step, only one.
    say(
        &node,
        "smile",
        "sms",
        JORDAN,
        "sorry! thursday at 11am please",
        "d2",
    )
    .await;
    let pending = |c: &Value| -> Vec<String> {
        c["timers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"] == "follow_up")
            .map(|t| t["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    let p = pending(&c);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("Just checking in: Great! I can do Thu Mar 5 at 11:00 AM"),
        "{p:?}"
    );
    say(&node, "smile", "sms", JORDAN, "C", "d3").await;
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    assert!(pending(&c).is_empty(), "answered: no follow-up left");
    assert_eq!(
        texts_where(&c, "channel", "voice").len(),
        1,
        "no step repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_follow_up_call_gets_a_text_that_refers_to_it() {
    let (fake, node) = start().await;
    say(
        &node,
        "smile",
        "sms",
        JORDAN,
        "Hi, I'm Dana. I'd like to book a cleaning",
        "u1",
    )
    .await;
    node.advance(2.0 * 3600.0).await;
    node.advance(24.0 * 3600.0).await;
    // The second step is a real call through the Calls API.
    let mut call = None;
    for _ in 0..500 {
        call = fake
            .state
            .lock()
            .unwrap()
            .accepted
            .iter()
            .find(|(_, f)| f["_resource"] == "Calls")
            .map(|(_, f)| f.clone());
        if call.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let call = call.expect("a call was placed");
    let status = call["StatusCallback"]
        .strip_prefix(PUBLIC_URL)
        .unwrap()
        .to_owned();
    let params = [
        ("CallSid", "CA9"),
        ("AccountSid", SID),
        ("From", "+15557654321"),
        ("To", JORDAN),
        ("CallStatus", "no-answer"),
        ("Direction", "outbound-api"),
    ];
    let (s, _) = node.twilio(TOKEN, &status, &params).await;
    assert_eq!(s, 200);
    texted(&fake, |b| {
        b == "Hi Dana, we just tried to call you about booking your visit. Reply here whenever suits you."
    })
    .await;
}

fn reminder_dues(c: &Value) -> Vec<String> {
    c["timers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "reminder")
        .map(|t| t["at"].as_str().unwrap().to_owned())
        .collect()
}

async fn slot(node: &Node, start: &str) -> Value {
    let (s, cal) = node
        .get_admin("/api/v1/tenants/smile/calendar?from=2026-03-05T05:00:00Z&days=7")
        .await;
    assert_eq!(s, 200, "{cal}");
    cal["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["start"] == start)
        .cloned()
        .unwrap_or_else(|| panic!("no slot {start} in {cal}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_business_runs_the_calendar_and_records_no_shows_and_customers_move_or_cancel() {
    let (_fake, node) = start().await;
    let thu3 = "2026-03-05T20:00:00.000Z"; // Thu 3 PM in New York
    let thu4 = "2026-03-05T21:00:00.000Z";
    let fri10 = "2026-03-06T15:00:00.000Z";

    // The calendar comes from the flow's hours; the business blocks Thu 3 PM.
    let (_, cal) = node
        .get_admin("/api/v1/tenants/smile/calendar?from=2026-03-05T05:00:00Z&days=1")
        .await;
    assert_eq!(cal["timezone"], "America/New_York");
    assert_eq!(
        cal["slots"].as_array().unwrap().len(),
        8,
        "9 to 5, hourly: {cal}"
    );
    assert_eq!(slot(&node, thu3).await["status"], "free");
    let path = format!("/api/v1/tenants/smile/calendar/slots/{thu3}");
    let (s, v) = node.send_admin(Method::PUT, &path, None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("blocked")), "{v}");
    let (s, v) = node
        .send_admin(
            Method::PUT,
            "/api/v1/tenants/smile/calendar/slots/2026-03-05T20:07:00Z",
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("not_a_slot")),
        "{v}"
    );
    let (s, v) = node.get_admin("/api/v1/tenants/harbor/calendar").await;
    assert_eq!(s, 404, "a flow without a calendar: {v}");

    // A customer asks for the blocked time and gets the next opening.
    say(
        &node,
        "smile",
        "sms",
        JORDAN,
        "Hi, this is Jordan. I need a cleaning",
        "j1",
    )
    .await;
    say(&node, "smile", "sms", JORDAN, "Thursday at 3", "j2").await;
    let offer = bot_said(&node, "smile", JORDAN).await;
    assert!(offer.contains("Thu Mar 5 at 4:00 PM"), "{offer}");
    assert_eq!(slot(&node, thu4).await["status"], "held");
    say(&node, "smile", "sms", JORDAN, "C", "j3").await;
    let booked = slot(&node, thu4).await;
    assert_eq!(booked["status"], "booked");
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    assert_eq!(booked["conversation_id"], c["id"]);
    assert_eq!(
        reminder_dues(&c),
        ["2026-03-04T21:00:00.000Z", "2026-03-05T19:00:00.000Z"],
        "24 h and 2 h before"
    );
    // A booked slot cannot be blocked; the blocked one opens again.
    let (s, v) = node
        .send_admin(
            Method::PUT,
            &format!("/api/v1/tenants/smile/calendar/slots/{thu4}"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("slot_taken")),
        "{v}"
    );
    let (s, _) = node.send_admin(Method::DELETE, &path, None).await;
    assert_eq!(s, 200);
    assert_eq!(slot(&node, thu3).await["status"], "free");

    // Moved before its reminders: only the new time's reminders remain.
    say(
        &node,
        "smile",
        "sms",
        JORDAN,
        "R - could we do Friday at 10am instead?",
        "j4",
    )
    .await;
    say(&node, "smile", "sms", JORDAN, "yes", "j5").await;
    assert!(bot_said(&node, "smile", JORDAN)
        .await
        .starts_with("Done: your appointment is moved from"));
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    assert_eq!(
        reminder_dues(&c),
        ["2026-03-05T15:00:00.000Z", "2026-03-06T13:00:00.000Z"]
    );
    assert_eq!(slot(&node, thu4).await["status"], "free");
    assert_eq!(slot(&node, fri10).await["status"], "booked");

    // Another customer books and cancels in the thread.
    let sam = "+15551230009";
    say(
        &node,
        "smile",
        "sms",
        sam,
        "Hi, I'm Sam. I'd like a checkup Monday at 9",
        "s1",
    )
    .await;
    say(&node, "smile", "sms", sam, "C", "s2").await;
    let mon9 = "2026-03-09T13:00:00.000Z"; // Monday 9 AM, daylight time
    assert_eq!(slot(&node, mon9).await["status"], "booked");
    say(
        &node,
        "smile",
        "sms",
        sam,
        "Please cancel my appointment",
        "s3",
    )
    .await;
    assert_eq!(
        bot_said(&node, "smile", sam).await,
        "Done: your appointment Mon Mar 9 at 9:00 AM is cancelled. Text us any time to book again."
    );
    let c = node.conversation_of("smile", sam).await.unwrap();
    assert!(reminder_dues(&c).is_empty(), "{}", c["timers"]);
    assert_eq!(c["booking"]["status"], "cancelled");
    assert_eq!(slot(&node, mon9).await["status"], "free");

    // A no-show is recorded by the business once the time has come.
    let id = node.conversation_of("smile", JORDAN).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let outcome = format!("/api/v1/conversations/{id}/booking");
    let (s, v) = node
        .send_admin(Method::POST, &outcome, Some(&json!({"outcome": "no_show"})))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("not_yet")),
        "{v}"
    );
    let (s, v) = node
        .send_admin(Method::POST, &outcome, Some(&json!({"outcome": "late"})))
        .await;
    assert_eq!(s, 400, "{v}");
    node.advance(73.0 * 3600.0).await; // Fri 11:00
    let (s, v) = node
        .send_admin(Method::POST, &outcome, Some(&json!({"outcome": "no_show"})))
        .await;
    assert_eq!(s, 200, "{v}");
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    assert!(
        texts(&c).contains(&"[no-show: appointment Fri Mar 6 at 10:00 AM]".to_owned()),
        "{c}"
    );
    assert_eq!(c["booking"]["status"], "no_show");
    let (s, v) = node
        .send_admin(
            Method::POST,
            &outcome,
            Some(&json!({"outcome": "attended"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("no_booking")),
        "{v}"
    );

    let (_, m) = node.get_admin("/api/v1/tenants/smile/metrics").await;
    let b = &m["bookings"];
    assert_eq!(
        (
            b["confirmed"].as_u64(),
            b["rescheduled"].as_u64(),
            b["rebooked_self_service"].as_u64()
        ),
        (Some(3), Some(1), Some(1)),
        "{m}"
    );
    assert_eq!(b["reschedule_self_service_rate"], 1.0, "{m}");
    assert_eq!(
        (b["cancelled"].as_u64(), b["no_shows"].as_u64()),
        (Some(1), Some(1)),
        "{m}"
    );
    assert_eq!(b["no_show_rate"], 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_cannot_use_its_channel_moves_on_and_an_opt_out_ends_the_cadence() {
    let fake = FakeTwilio::start().await;
    let dir = tempfile::tempdir().unwrap();
    let dental = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/flows/dental.toml"
    ))
    .unwrap();
    let at = dental.find("steps = [").unwrap();
    let end = at + dental[at..].find("\n]").unwrap() + 2;
    let steps = r#"steps = [
  { after = "25h", channel = "whatsapp", text = "WA: {question}" },
  { after = "1d", channel = "sms", text = "SMS: {question}" },
  { after = "1d", channel = "voice", text = "Call: {question}" },
]"#;
    let flow = format!("{}{steps}{}", &dental[..at], &dental[end..]);
    let path = dir.path().join("cadence.toml");
    std::fs::write(&path, flow).unwrap();
    let cfg = config(&fake.base).replace(
        &format!("{}/examples/flows/dental.toml", env!("CARGO_MANIFEST_DIR")),
        path.to_str().unwrap(),
    );
    let node = Node::start_with_config(&cfg, &["--simulated-clock", NOW]);
    let hello = "Hi, I'm Dana. I'd like to book a cleaning";
    say(&node, "smile", "whatsapp", JORDAN, hello, "d1").await;
    // A day later the WhatsApp step cannot go out (the 24-hour window has
    // closed, and a question is no template): the SMS step goes at once
    // instead of a day later.
    node.advance(25.0 * 3600.0).await;
    texted(&fake, |b| b == "SMS: What day and time work best for you?").await;
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    let blocked: Vec<String> = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["delivery"] == "blocked")
        .map(|m| format!("{} {}", m["channel"], m["text"]))
        .collect();
    assert_eq!(
        blocked,
        vec!["\"whatsapp\" \"WA: What day and time work best for you?\""],
        "{c}"
    );
    // The customer opts out: nothing more, on any channel.
    say(&node, "smile", "sms", JORDAN, "STOP", "d2").await;
    node.advance(3.0 * 86400.0).await;
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    assert!(texts_where(&c, "channel", "voice").is_empty(), "{c}");
    let pending: Vec<&Value> = c["timers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "follow_up")
        .collect();
    assert!(pending.is_empty(), "{pending:?}");
}

/// A customer texting the clinic's number, through Twilio's signed webhook.
async fn sms_in(node: &Node, from: &str, body: &str, sid: &str) {
    let params = [
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("AccountSid", SID),
        ("From", from),
        ("To", "+15557654321"),
        ("Body", body),
        ("NumMedia", "0"),
    ];
    let (s, text) = node.twilio(TOKEN, "/webhooks/twilio/sms", &params).await;
    assert_eq!(s, 200, "{text}");
}

/// The double booking and the phantom cancellation a clinic's customers
/// ran into, over signed Twilio webhooks with a restart in the middle: a
/// move in plain words keeps the old time until the new one is confirmed,
/// nobody else is given it meanwhile, "I can't make it anymore" frees the
/// time and its reminders, and afterwards every slot has one holder and
/// the conversations, the calendar and the reminders agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_and_cancellations_in_plain_words_never_double_book_a_slot() {
    let (fake, mut node) = start().await;
    let ana = "+15551230011";
    let ben = "+15551230012";
    let thu11 = "2026-03-05T16:00:00.000Z";
    let fri3 = "2026-03-06T20:00:00.000Z";
    sms_in(
        &node,
        ana,
        "Hi, I'm Ana. I need a cleaning thursday at 11am",
        "A1",
    )
    .await;
    sms_in(&node, ana, "yes", "A2").await;
    assert!(bot_said(&node, "smile", ana)
        .await
        .starts_with("You're confirmed for Thu Mar 5 at 11:00 AM"));
    sms_in(&node, ana, "I'd like to move my appointment", "A3").await;
    let said = bot_said(&node, "smile", ana).await;
    assert!(
        said.contains("stays booked until you confirm a new one"),
        "{said}"
    );
    sms_in(&node, ana, "reschedule to friday at 3pm please", "A4").await;
    assert!(bot_said(&node, "smile", ana)
        .await
        .contains("Fri Mar 6 at 3:00 PM"));
    let c = node.conversation_of("smile", ana).await.unwrap();
    assert_eq!(c["booking"]["status"], "rescheduling", "{}", c["booking"]);
    assert_eq!(c["booking"]["start"], thu11);
    assert_eq!(c["booking"]["offer"]["start"], fri3);
    assert_eq!(
        reminder_dues(&c).len(),
        2,
        "the booked time's reminders stay"
    );

    // The node restarts while Ana decides; Ben asks for Thursday 11.
    node.restart();
    assert_eq!(slot(&node, thu11).await["status"], "booked");
    sms_in(
        &node,
        ben,
        "Hi, I'm Ben. Can I book a cleaning thursday at 11am?",
        "B1",
    )
    .await;
    let said = bot_said(&node, "smile", ben).await;
    assert!(
        said.starts_with("Thu Mar 5 at 11:00 AM isn't available"),
        "{said}"
    );
    sms_in(&node, ben, "yes", "B2").await;

    sms_in(&node, ana, "yes", "A5").await;
    let said = bot_said(&node, "smile", ana).await;
    assert!(
        said.starts_with(
            "Done: your appointment is moved from Thu Mar 5 at 11:00 AM to Fri Mar 6 at 3:00 PM"
        ),
        "{said}"
    );
    assert_eq!(slot(&node, thu11).await["status"], "free");
    assert_eq!(slot(&node, fri3).await["status"], "booked");

    // The phantom cancellation, for Ben.
    sms_in(&node, ben, "I can't make it anymore", "B3").await;
    let said = bot_said(&node, "smile", ben).await;
    assert!(said.starts_with("Done: your appointment"), "{said}");
    assert!(said.contains("is cancelled"), "{said}");

    // Everything agrees: each booked slot has one conversation, which
    // holds it as its confirmed booking, with its reminders.
    let a = node.conversation_of("smile", ana).await.unwrap();
    let b = node.conversation_of("smile", ben).await.unwrap();
    assert_eq!(a["booking"]["status"], "confirmed");
    assert_eq!(a["booking"]["start"], fri3);
    assert_eq!(
        reminder_dues(&a),
        ["2026-03-05T20:00:00.000Z", "2026-03-06T18:00:00.000Z"]
    );
    assert_eq!(a["booking"]["reminders"].as_array().unwrap().len(), 2);
    assert_eq!(b["booking"]["status"], "cancelled");
    assert!(reminder_dues(&b).is_empty(), "{}", b["timers"]);
    let (_, cal) = node
        .get_admin("/api/v1/tenants/smile/calendar?from=2026-03-05T05:00:00Z&days=7")
        .await;
    let taken: Vec<(String, String)> = cal["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["status"] != "free")
        .map(|x| {
            (
                x["start"].as_str().unwrap().into(),
                x["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(taken, [(fri3.to_owned(), "booked".to_owned())], "{cal}");
    // The transcript the agent reads tells the story; the customer never
    // got those notes.
    let notes = texts_where(&a, "delivery", "internal");
    assert!(
        notes.iter().any(|n| n.starts_with(
            "[booking moved: cleaning from Thu Mar 5 at 11:00 AM to Fri Mar 6 at 3:00 PM"
        )),
        "{notes:?}"
    );
    assert!(fake.accepted_bodies().iter().all(|b| !b.starts_with('[')));
    // The business's list of appointments, with their conversations.
    let (s, list) = node
        .get_admin(
            "/api/v1/tenants/smile/bookings?from=2026-03-03T00:00:00Z&to=2026-03-10T00:00:00Z",
        )
        .await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(
        list["bookings"],
        json!([{"start": fri3, "conversation_id": a["id"], "contact": ana, "name": "Ana",
                "service": "cleaning", "status": "confirmed", "moving_to": null}]),
        "{list}"
    );
    let (s, bad) = node
        .get_admin(
            "/api/v1/tenants/smile/bookings?from=2026-03-10T00:00:00Z&to=2026-03-03T00:00:00Z",
        )
        .await;
    assert_eq!((s, &bad["error"]["code"]), (400, &json!("invalid_query")));
    // The outcomes, each counted once and kept across the restart.
    let (_, m) = node.get_admin("/api/v1/tenants/smile/metrics").await;
    assert_eq!(m["bookings"]["confirmed"], 3, "Ana twice, Ben once: {m}");
    assert_eq!(m["bookings"]["rescheduled"], 1, "{m}");
    assert_eq!(m["bookings"]["rebooked_self_service"], 1, "{m}");
    assert_eq!(m["bookings"]["cancelled"], 1, "{m}");
    assert_eq!(m["first_response"]["conversations"], 2, "{m}");
    node.restart();
    let (_, again) = node.get_admin("/api/v1/tenants/smile/metrics").await;
    assert_eq!(again, m);
    // Reminders go out for the moved time only.
    node.advance(56.0 * 3600.0).await; // Thu 15:00 EST: 24 h before Friday 3 PM
    texted(&fake, |b| {
        b.starts_with("Reminder from Bright Smile Dental: your cleaning is Fri Mar 6 at 3:00 PM")
    })
    .await;
    assert!(
        !fake
            .accepted_bodies()
            .iter()
            .any(|b| b.contains("Thu Mar 5 at 11:00 AM") && b.starts_with("Reminder")),
        "no reminder for the old time"
    );
}

/// The clinic's flow on WhatsApp and SMS, with a reminder template.
async fn start_with_whatsapp() -> (FakeTwilio, common::fake_provider::FakeWhatsapp, Node) {
    use common::fake_provider::{FakeWhatsapp, WA_PHONE_ID, WA_TOKEN};
    let fake = FakeTwilio::start().await;
    let wa = FakeWhatsapp::start().await;
    let cfg = config(&fake.base)
        .replace(
            "[[tenants]]\nid = \"smile\"",
            &format!(
                "[providers.whatsapp]\napp_secret = \"{WA_SECRET}\"\nverify_token = \"verify-me\"\naccess_token = \"{WA_TOKEN}\"\napi_base = \"{}\"\n\n[[tenants]]\nid = \"smile\"\nwhatsapp_phone_number_id = \"{WA_PHONE_ID}\"",
                wa.base
            ),
        )
        .replace(
            "flow = \"",
            "whatsapp_templates = { reminder = { name = \"appointment_reminder\", language = \"en_US\" } }\nflow = \"",
        );
    let node = Node::start_with_config(&cfg, &["--simulated-clock", NOW]);
    (fake, wa, node)
}

const WA_SECRET: &str = "test_app_secret";

/// A customer writing on WhatsApp (a signed Cloud API notification).
async fn wa_in(node: &Node, wa_id: &str, text: &str, id: &str) {
    let body =
        common::webhooks::whatsapp_text(common::fake_provider::WA_PHONE_ID, wa_id, id, text, "Dee");
    let (s, v) = node.whatsapp(WA_SECRET, &body).await;
    assert_eq!(s, 200, "{v}");
}

/// The WhatsApp texts the fake Cloud API was asked to send.
fn wa_sent(wa: &common::fake_provider::FakeWhatsapp) -> Vec<Value> {
    wa.sent
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v.clone())
        .collect()
}

/// On WhatsApp the journey asks for the reminder opt-in it needs, keeps
/// the customer's YES as consent with the message as proof, and the
/// reminder goes out as the tenant's template outside the 24-hour window.
/// A customer who says no gets the reminder on the next channel the gate
/// allows (a text), never silently nothing; each service has its own
/// reminder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_reminders_are_asked_for_and_sent_as_templates_or_on_another_channel() {
    let (fake, wa, node) = start_with_whatsapp().await;
    let dee = "15551230021";
    wa_in(
        &node,
        dee,
        "Hi, I need a cleaning thursday at 11am",
        "wamid.D1",
    )
    .await;
    wa_in(&node, dee, "yes", "wamid.D2").await;
    let said = bot_said(&node, "smile", &format!("+{dee}")).await;
    assert!(
        said.starts_with("You're confirmed for Thu Mar 5 at 11:00 AM")
            && said.ends_with("Can we send your reminder here on WhatsApp? Reply YES."),
        "{said}"
    );
    wa_in(&node, dee, "YES", "wamid.D3").await;
    assert_eq!(
        bot_said(&node, "smile", &format!("+{dee}")).await,
        "Thanks! Your reminder will come here on WhatsApp."
    );
    let (s, consent) = node
        .get_admin(&format!("/api/v1/tenants/smile/contacts/%2B{dee}/consent"))
        .await;
    assert_eq!(s, 200, "{consent}");
    assert_eq!(
        consent["channels"]["whatsapp"]["purposes"]["reminder"], "opted_in",
        "{consent}"
    );
    let records = consent["history"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["status"] == "opted_in"
            && r["channel"] == "whatsapp"
            && r["purpose"] == "reminder"
            && r["raw_text"] == "YES"
            && r["provider_message_id"] == "wamid.D3"),
        "{consent}"
    );
    // A whitening for Eli, who says no to WhatsApp reminders.
    let eli = "15551230022";
    wa_in(&node, eli, "I'd like whitening friday at 2pm", "wamid.E1").await;
    wa_in(&node, eli, "C", "wamid.E2").await;
    wa_in(&node, eli, "no thanks", "wamid.E3").await;
    assert_eq!(
        bot_said(&node, "smile", &format!("+{eli}")).await,
        "Okay, no reminder on WhatsApp."
    );
    let e = node
        .conversation_of("smile", &format!("+{eli}"))
        .await
        .unwrap();
    assert_eq!(
        reminder_dues(&e),
        ["2026-03-04T19:00:00.000Z", "2026-03-06T17:00:00.000Z"],
        "whitening: 48 h and 2 h before"
    );

    // Wednesday 11:00: 25 hours after Dee last wrote, the window is shut.
    node.advance(25.0 * 3600.0).await;
    let mut template = None;
    for _ in 0..500 {
        template = wa_sent(&wa).into_iter().find(|v| v["type"] == "template");
        if template.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let template = template.expect("the reminder went as a template");
    assert_eq!(template["to"], dee);
    assert_eq!(template["template"]["name"], "appointment_reminder");
    let param = template["template"]["components"][0]["parameters"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        param,
        "Bright Smile Dental: your cleaning is Thu Mar 5 at 11:00 AM. Reply C to confirm or R to reschedule.",
        "{template}"
    );
    // Eli's whitening reminder (48 h before: Wed 14:00) cannot go on
    // WhatsApp: it goes by text instead.
    node.advance(3.0 * 3600.0).await;
    let text = texted(&fake, |b| {
        b.contains("your whitening is Fri Mar 6 at 2:00 PM")
    })
    .await;
    assert!(text.contains("skip coffee"), "{text}");
    let e = node
        .conversation_of("smile", &format!("+{eli}"))
        .await
        .unwrap();
    let blocked: Vec<&Value> = e["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["delivery"] == "blocked")
        .collect();
    assert_eq!(blocked.len(), 1, "{e}");
    assert_eq!(blocked[0]["channel"], "whatsapp");

    // Eli cancels in words on WhatsApp: the slot is free and the 2-hour
    // reminder is gone.
    wa_in(&node, eli, "sorry i cant make it anymore", "wamid.E4").await;
    let said = bot_said(&node, "smile", &format!("+{eli}")).await;
    assert_eq!(
        said,
        "Done: your appointment Fri Mar 6 at 2:00 PM is cancelled. Text us any time to book again."
    );
    let e = node
        .conversation_of("smile", &format!("+{eli}"))
        .await
        .unwrap();
    assert_eq!(e["booking"]["status"], "cancelled");
    assert!(reminder_dues(&e).is_empty(), "{}", e["timers"]);
    assert_eq!(
        slot(&node, "2026-03-06T19:00:00.000Z").await["status"],
        "free"
    );
}

/// A bare opt-out keyword during a booking stays an opt-out, and the
/// appointment becomes a question for a person: it is offered to the
/// pool with the reason and stays on the calendar until someone cancels
/// it (which frees the time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_with_an_appointment_booked_is_handed_to_a_person() {
    let (_fake, node) = start().await;
    let fay = "+15551230031";
    sms_in(&node, fay, "Hi, I need a checkup thursday at 2pm", "F1").await;
    sms_in(&node, fay, "C", "F2").await;
    let thu2 = "2026-03-05T19:00:00.000Z";
    assert_eq!(slot(&node, thu2).await["status"], "booked");
    sms_in(&node, fay, "Cancel", "F3").await;
    let c = node.conversation_of("smile", fay).await.unwrap();
    let last = texts_where(&c, "author", "system");
    assert!(
        last.iter().any(|t| t.contains("you are unsubscribed")),
        "the opt-out stands: {last:?}"
    );
    assert_eq!(c["booking"]["status"], "confirmed", "still booked");
    assert_eq!(slot(&node, thu2).await["status"], "booked");
    let (_, q) = node.get_admin("/api/v1/tenants/smile/queue").await;
    assert_eq!(q["waiting"], 1, "{q}");
    let id = c["id"].as_str().unwrap().to_owned();
    let notes = texts_where(&c, "delivery", "internal");
    assert!(
        notes.iter().any(|n| n.starts_with(
            "[handed to a person: opted out (\"Cancel\") with a checkup booked for Thu Mar 5 at 2:00 PM"
        )),
        "{notes:?}"
    );
    // A person decides: the business cancels it, and the time is free.
    let (s, v) = node
        .send_admin(
            Method::POST,
            &format!("/api/v1/conversations/{id}/booking"),
            Some(&json!({"outcome": "cancelled"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(slot(&node, thu2).await["status"], "free");
    let c = node.conversation_of("smile", fay).await.unwrap();
    assert_eq!(c["booking"]["status"], "cancelled");
    assert!(reminder_dues(&c).is_empty());
    assert!(
        texts_where(&c, "delivery", "internal")
            .iter()
            .any(|t| t
                .starts_with("[booking cancelled by the business: checkup Thu Mar 5 at 2:00 PM"))
    );
}

/// A reminder the consent gate holds back stays the booking's: a move
/// cancels it; and one held until too close to the appointment is noted,
/// not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_reminders_follow_the_booking_and_never_arrive_at_the_appointment() {
    let (fake, node) = start().await;
    let gus = "+15551230041";
    // Wednesday 10 AM: its 2-hour reminder is due at 8 AM.
    sms_in(&node, gus, "Hi, I need a cleaning wednesday at 10am", "G1").await;
    sms_in(&node, gus, "C", "G2").await;
    // Tuesday 10:00 → Wednesday 7:59.
    node.advance(21.0 * 3600.0 + 59.0 * 60.0).await;
    node.advance(120.0).await;
    let c = node.conversation_of("smile", gus).await.unwrap();
    // Quiet hours held it until 9:00; held, it is still the booking's.
    assert_eq!(reminder_dues(&c), ["2026-03-04T14:00:00.000Z"]);
    assert_eq!(
        c["booking"]["reminders"],
        json!([{"id": c["timers"][1]["id"], "at": "2026-03-04T14:00:00.000Z"}]),
        "{}",
        c["timers"]
    );
    // The customer moves it: no reminder for Wednesday goes out after.
    sms_in(&node, gus, "can we move it to friday at 3pm", "G3").await;
    sms_in(&node, gus, "C", "G4").await;
    let before = fake.accepted_bodies().len();
    node.advance(4.0 * 3600.0).await;
    let late: Vec<String> = fake.accepted_bodies()[before..]
        .iter()
        .filter(|b| b.starts_with("Reminder") && b.contains("Wed Mar 4"))
        .cloned()
        .collect();
    assert!(late.is_empty(), "{late:?}");

    // Thursday 9 AM: its 2-hour reminder (7 AM) would be held until the
    // appointment itself; it is noted for the business, not sent.
    let hal = "+15551230042";
    sms_in(&node, hal, "Hi, I need a checkup thursday at 9am", "H1").await;
    sms_in(&node, hal, "C", "H2").await;
    node.advance(22.0 * 3600.0).await; // Thursday 10:00
    let h = node.conversation_of("smile", hal).await.unwrap();
    assert!(
        !fake
            .accepted_bodies()
            .iter()
            .any(|b| b.starts_with("Reminder") && b.contains("Thu Mar 5 at 9:00 AM")),
        "no reminder at the appointment's own time"
    );
    let notes = texts_where(&h, "delivery", "internal");
    assert!(
        notes.iter().any(|n| n.starts_with("[reminder not sent: ")
            && n.contains("too close to the appointment Thu Mar 5 at 9:00 AM")),
        "{notes:?}"
    );
}

/// The business's list of conversations: every channel, filtered the ways
/// a front desk asks (waiting for a person, booked, opted out, a channel, a
/// name), most recently updated first, paged by cursor with nothing
/// repeated or lost; and a long transcript paged back from the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_business_lists_filters_and_pages_its_conversations() {
    let (_fake, node) = start().await;
    let ann = "+15551230051";
    sms_in(
        &node,
        ann,
        "Hi, I'm Ann. I need a cleaning thursday at 11am",
        "L1",
    )
    .await;
    sms_in(&node, ann, "C", "L2").await;
    say(
        &node,
        "smile",
        "webchat",
        "visitor-51",
        "can I talk to a person please",
        "L3",
    )
    .await;
    say(
        &node,
        "smile",
        "whatsapp",
        "+15551230053",
        "what are your hours?",
        "L4",
    )
    .await;
    sms_in(&node, "+15551230054", "STOP", "L5").await;
    node.advance(60.0).await;
    sms_in(&node, "+15551230055", "Do you take Delta insurance?", "L6").await;

    let list = |q: &str| {
        let node = &node;
        let q = q.to_owned();
        async move {
            let (s, v) = node
                .get_admin(&format!("/api/v1/tenants/smile/conversations?{q}"))
                .await;
            assert_eq!(s, 200, "{q}: {v}");
            v
        }
    };
    let contacts = |v: &Value| -> Vec<String> {
        v["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["contact"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = list("").await;
    let everyone = contacts(&all);
    assert_eq!(everyone.len(), 5, "{all}");
    assert_eq!(
        everyone[0], "+15551230055",
        "the latest first: {everyone:?}"
    );
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(contacts(&list("channel=webchat").await), ["visitor-51"]);
    assert_eq!(contacts(&list("waiting=true").await), ["visitor-51"]);
    assert_eq!(contacts(&list("booked=true").await), [ann]);
    assert_eq!(contacts(&list("opted_out=true").await), ["+15551230054"]);
    assert_eq!(contacts(&list("q=ann").await), [ann]);
    assert_eq!(
        contacts(&list("q=delta%20insurance").await),
        ["+15551230055"]
    );
    assert_eq!(
        contacts(&list("updated_since=2026-03-03T15:00:30Z").await),
        ["+15551230055"]
    );
    let row = &list("booked=true").await["conversations"][0];
    assert_eq!(row["name"], "Ann");
    assert_eq!(row["booking"]["status"], "confirmed");
    assert_eq!(row["last_message"]["author"], "bot");
    // Pages of two: every conversation once, in the same order.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    for _ in 0..5 {
        let v = list(&format!("limit=2&cursor={cursor}")).await;
        paged.extend(contacts(&v));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(paged, everyone);
    // Bad input is a clear 400.
    for bad in ["limit=0", "status=sleeping", "waiting=maybe", "cursor=zz"] {
        let (s, v) = node
            .get_admin(&format!("/api/v1/tenants/smile/conversations?{bad}"))
            .await;
        assert_eq!(
            (s, &v["error"]["code"]),
            (400, &json!("invalid_query")),
            "{bad}"
        );
    }

    // Ann's transcript, two messages a page, back from the newest.
    let id = node.conversation_of("smile", ann).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let full = node.conversation_of("smile", ann).await.unwrap();
    let want: Vec<String> = full["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let mut got: Vec<String> = Vec::new();
    let mut before = String::new();
    loop {
        let (s, v) = node
            .get_admin(&format!(
                "/api/v1/conversations/{id}/messages?limit=2&before={before}"
            ))
            .await;
        assert_eq!(s, 200, "{v}");
        let page: Vec<String> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(page.len() <= 2);
        got.splice(0..0, page);
        match v["next_before"].as_str() {
            Some(b) => before = b.to_owned(),
            None => break,
        }
    }
    assert_eq!(got, want);
}

/// A follow-up the consent gate holds back (quiet hours at night) is
/// still the cadence's: when the customer answers before it goes out, it
/// never goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_follow_up_is_called_off_when_the_customer_answers() {
    let (fake, node) = start().await;
    let ivy = "+15551230061";
    // Tuesday 20:00 in New York: the bot asks, the follow-up is due at 22:00.
    node.advance(10.0 * 3600.0).await;
    sms_in(&node, ivy, "Hi, I'd like to book a visit", "I1").await;
    node.advance(2.5 * 3600.0).await; // 22:30: held for the morning
    let c = node.conversation_of("smile", ivy).await.unwrap();
    let held: Vec<&Value> = c["timers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "follow_up")
        .collect();
    assert_eq!(held.len(), 1, "{}", c["timers"]);
    assert!(
        !fake
            .accepted_bodies()
            .iter()
            .any(|b| b.starts_with("Just checking in")),
        "nothing at night"
    );
    // She answers at 23:00; the morning comes.
    node.advance(1800.0).await;
    sms_in(&node, ivy, "a cleaning please", "I2").await;
    let c = node.conversation_of("smile", ivy).await.unwrap();
    assert!(
        !c["timers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == held[0]["id"]),
        "the held follow-up is off: {}",
        c["timers"]
    );
    node.advance(12.0 * 3600.0).await;
    let sent: Vec<String> = fake
        .accepted_bodies()
        .into_iter()
        .filter(|b| b.starts_with("Just checking in") && b.contains("come in for"))
        .collect();
    assert!(sent.is_empty(), "{sent:?}");
}

/// Issue 22's transcripts, typed as customers type them, over signed
/// Twilio webhooks: each gets the answer a person at the front desk
/// would give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_ordinary_phrasing_gets_the_answer_a_person_would_give() {
    let (_fake, node) = start().await;
    // A time alone, casually written, books; "yea" confirms; "push it
    // back an hour" moves by an hour (5 PM is past closing: 3 PM, the
    // nearest that day, is offered).
    let hal = "+15551230051";
    sms_in(&node, hal, "can u do tmrw around 4ish?", "H1").await;
    let said = bot_said(&node, "smile", hal).await;
    assert!(
        said.contains("What would you like to come in for"),
        "{said}"
    );
    sms_in(&node, hal, "a cleaning", "H2").await;
    let said = bot_said(&node, "smile", hal).await;
    assert!(said.contains("Wed Mar 4 at 4:00 PM"), "{said}");
    sms_in(&node, hal, "yea", "H3").await;
    let said = bot_said(&node, "smile", hal).await;
    assert!(
        said.starts_with("You're confirmed for Wed Mar 4 at 4:00 PM"),
        "{said}"
    );
    sms_in(&node, hal, "can we push it back an hour?", "H4").await;
    let said = bot_said(&node, "smile", hal).await;
    assert!(
        said.contains("We're open 9:00 AM to 5:00 PM. I can do Wed Mar 4 at 3:00 PM"),
        "{said}"
    );
    // Thanks twice is no reason to hand over.
    sms_in(&node, hal, "no keep it, thx", "H5").await;
    sms_in(&node, hal, "thx", "H6").await;
    sms_in(&node, hal, "thanks!", "H7").await;
    let c = node.conversation_of("smile", hal).await.unwrap();
    assert_eq!(c["assigned_agent"], Value::Null);
    assert_eq!(c["booking"]["status"], "confirmed", "{}", c["booking"]);
    assert_eq!(c["booking"]["start"], "2026-03-04T21:00:00.000Z");
    assert_eq!(
        bot_said(&node, "smile", hal).await,
        "You're welcome! Anything else, just text us."
    );
    let (_, q) = node.get_admin("/api/v1/tenants/smile/queue").await;
    assert_eq!(q["waiting"], 0, "{q}");

    // The truth about the assistant.
    let ida = "+15551230052";
    sms_in(&node, ida, "Wait, am I talking to a robot?", "I1").await;
    let said = bot_said(&node, "smile", ida).await;
    assert!(
        said.starts_with("I'm Ava, an automated assistant."),
        "{said}"
    );
    // Mentioning someone is not asking for a person; asking is.
    sms_in(&node, ida, "I'm calling for someone else", "I2").await;
    let (_, q) = node.get_admin("/api/v1/tenants/smile/queue").await;
    assert_eq!(q["waiting"], 0, "{q}");
    sms_in(&node, ida, "Can I speak with someone real?", "I3").await;
    let (_, q) = node.get_admin("/api/v1/tenants/smile/queue").await;
    assert_eq!(q["waiting"], 1, "{q}");

    // Opt-outs in ordinary words; asking to keep texting is not one.
    let jo = "+15551230053";
    sms_in(
        &node,
        jo,
        "please don't stop texting me the reminders",
        "J1",
    )
    .await;
    assert_ne!(consent_status(&node, jo).await, "opted_out");
    let kim = "+15551230054";
    sms_in(&node, kim, "wrong number", "K1").await;
    assert_eq!(consent_status(&node, kim).await, "opted_out");
    let lou = "+15551230055";
    sms_in(&node, lou, "no more texts please", "L1").await;
    assert_eq!(consent_status(&node, lou).await, "opted_out");
}

/// The contact's consent status, as the API reads it.
async fn consent_status(node: &Node, who: &str) -> String {
    let (s, v) = node
        .get_admin(&format!(
            "/api/v1/tenants/smile/contacts/{}/consent",
            who.replace('+', "%2B")
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    v["status"].as_str().unwrap_or_default().to_owned()
}

/// A TwiML verb as a caller's phone would act on it: its name, its
/// attributes and its text (a `<Say>` inside a `<Gather>` is a verb of
/// its own, after the `<Gather>`).
#[derive(Debug)]
struct Verb {
    name: String,
    attrs: std::collections::HashMap<String, String>,
    text: String,
}

/// The verbs of a TwiML document, read with an XML parser.
fn verbs(twiml: &str) -> Vec<Verb> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(twiml);
    let mut out: Vec<Verb> = Vec::new();
    loop {
        match reader.read_event().expect("TwiML is well-formed XML") {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.name().as_ref().to_owned();
                let attrs = e
                    .attributes()
                    .map(|a| {
                        let a = a.unwrap();
                        (
                            a.key.as_ref().to_owned(),
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .unwrap()
                                .into_owned(),
                        )
                    })
                    .collect();
                out.push(Verb {
                    name,
                    attrs,
                    text: String::new(),
                });
            }
            Event::Text(t) => {
                if let Some(v) = out.last_mut() {
                    v.text.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                if let Some(v) = out.last_mut() {
                    v.text.push_str(match &*r {
                        "quot" => "\"",
                        "amp" => "&",
                        "apos" => "'",
                        "lt" => "<",
                        "gt" => ">",
                        other => panic!("entity {other}"),
                    });
                }
            }
            Event::Eof => return out,
            _ => {}
        }
    }
}

/// What the call says next (every `<Say>`, joined) and where its
/// `<Gather>` posts the answer, if it listens.
fn heard(twiml: &str) -> (String, Option<String>) {
    let v = verbs(twiml);
    let said = v
        .iter()
        .filter(|v| v.name == "Say")
        .map(|v| v.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let gather = v.iter().find(|v| v.name == "Gather").map(|g| {
        assert_eq!(g.attrs["input"], "speech dtmf", "speech or a key");
        g.attrs["action"].clone()
    });
    (said, gather)
}

/// A caller of the clinic, through Twilio's signed voice webhooks: the
/// call's next step after saying `speech` (or pressing `digits`) at `at`.
async fn caller(node: &Node, sid: &str, at: &str, speech: &str, digits: &str) -> String {
    let mut p = vec![
        ("CallSid", sid),
        ("AccountSid", SID),
        ("From", "+15551230061"),
        ("To", "+15557654321"),
        ("CallStatus", "in-progress"),
        ("Direction", "inbound"),
    ];
    if !speech.is_empty() {
        p.push(("SpeechResult", speech));
        p.push(("Confidence", "0.92"));
    }
    if !digits.is_empty() {
        p.push(("Digits", digits));
    }
    let (s, twiml) = node.twilio(TOKEN, at, &p).await;
    assert_eq!(s, 200, "{twiml}");
    twiml
}

/// A caller who never speaks books by keypad alone: silence brings the
/// flow's menu, 1 a visit, then each question read with its keys, and 1
/// confirms the first opening offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_books_a_cleaning_by_keypad_alone() {
    let fake = FakeTwilio::start().await;
    let cfg = config(&fake.base).replace(
        "gateway_token = \"gw-smile\"\n",
        "gateway_token = \"gw-smile\"\nvoice_assistant = true\nowner_phone = \"+15550009999\"\n",
    );
    let node = Node::start_with_config(&cfg, &["--simulated-clock", NOW]);
    let (_, next) = heard(&caller(&node, "CK1", "/webhooks/twilio/voice", "", "").await);
    // Not understood: what Ava can do, and the keys for it.
    let (said, next) =
        heard(&caller(&node, "CK1", &next.unwrap(), "umm the purple thing", "").await);
    assert!(said.starts_with("Sorry, I didn't catch that."), "{said}");
    assert!(
        said.ends_with("For insurance, press 4. To talk to a person, press 0."),
        "{said}"
    );
    let next = next.expect("it listens");
    // Nothing said: asked again, then the menu (once).
    let (said, _) = heard(&caller(&node, "CK1", &format!("{next}&silence=1"), "", "").await);
    assert!(
        said.starts_with(
            "Sorry, I didn't hear anything. How can I help you? For a visit, press 1."
        ),
        "{said}"
    );
    assert_eq!(said.matches("For a visit, press 1.").count(), 1, "{said}");
    assert!(
        said.contains("For a visit, press 1. For our hours, press 2. For directions, press 3. For insurance, press 4. To talk to a person, press 0."),
        "{said}"
    );
    let (said, next) = heard(&caller(&node, "CK1", &next, "", "1").await);
    assert!(
        said.starts_with("Happy to help! What would you like to come in for"),
        "{said}"
    );
    assert!(
        said.ends_with("Or press 1 for cleaning, 2 for checkup, 3 for whitening, 4 for filling, or 5 for crown."),
        "{said}"
    );
    let (said, next) = heard(&caller(&node, "CK1", &next.unwrap(), "", "1").await);
    assert!(
        said.starts_with("What day and time work best for you?"),
        "{said}"
    );
    assert!(
        said.ends_with("Or press 1 for our first opening."),
        "{said}"
    );
    // Tuesday 10:00 Eastern: the first opening is an hour on, at 11.
    let (said, next) = heard(&caller(&node, "CK1", &next.unwrap(), "", "1").await);
    assert!(
        said.starts_with("Great! I can do Tue Mar 3 at 11:00 AM for your cleaning. Say yes or press 1 to confirm"),
        "{said}"
    );
    // A silence while the time waits for an answer: the offer again.
    let next = next.unwrap();
    let (said, _) = heard(&caller(&node, "CK1", &format!("{next}&silence=1"), "", "").await);
    assert!(
        said.starts_with("Sorry, I didn't hear anything. I can do Tue Mar 3 at 11:00 AM"),
        "{said}"
    );
    let (said, next) = heard(&caller(&node, "CK1", &next, "", "1").await);
    assert!(
        said.starts_with("You're confirmed for Tue Mar 3 at 11:00 AM"),
        "{said}"
    );
    // Served, with nothing left to answer: two silences end the call
    // politely (no transfer, no missed call).
    let next = next.expect("it asks what else");
    let twiml = caller(&node, "CK1", &format!("{next}&silence=2"), "", "").await;
    assert!(!twiml.contains("<Dial"), "{twiml}");
    let (said, _) = heard(&twiml);
    assert_eq!(said, "Thanks for calling Bright Smile Dental. Goodbye.");
    let c = node.conversation_of("smile", "+15551230061").await.unwrap();
    assert_eq!(c["booking"]["status"], "confirmed", "{}", c["booking"]);
    assert_eq!(c["booking"]["service"], "cleaning");
    // The transcript says what each key meant.
    let heard_keys: Vec<&str> = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["author"] == "customer")
        .filter_map(|m| m["text"].as_str())
        .filter(|t| !t.starts_with('['))
        .collect();
    assert_eq!(
        heard_keys,
        [
            "umm the purple thing",
            "book (pressed 1)",
            "cleaning (pressed 1)",
            "as soon as possible (pressed 1)",
            "yes (pressed 1)"
        ]
    );
}

/// Callers as they speak: "cancel" after hearing their appointment
/// cancels it (on a call the texting keyword is not an opt-out), "no
/// that's it" ends the call, a yes to "Want me to book you in?" books, a
/// transfer is announced before the ringing, and a caller nobody answers
/// is told so before the call ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_is_understood_as_callers_speak() {
    let fake = FakeTwilio::start().await;
    let cfg = config(&fake.base).replace(
        "gateway_token = \"gw-smile\"\n",
        "gateway_token = \"gw-smile\"\nvoice_assistant = true\nowner_phone = \"+15550009999\"\n",
    );
    let node = Node::start_with_config(&cfg, &["--simulated-clock", NOW]);
    let (_, next) = heard(&caller(&node, "CS1", "/webhooks/twilio/voice", "", "").await);
    let (_, next) = heard(
        &caller(
            &node,
            "CS1",
            &next.unwrap(),
            "a cleaning wednesday at 11",
            "",
        )
        .await,
    );
    let (said, next) = heard(&caller(&node, "CS1", &next.unwrap(), "yes", "").await);
    assert!(
        said.starts_with("You're confirmed for Wed Mar 4 at 11:00 AM"),
        "{said}"
    );
    let (said, next) = heard(
        &caller(
            &node,
            "CS1",
            &next.unwrap(),
            "what time is my appointment again",
            "",
        )
        .await,
    );
    assert!(said.contains("tell me if you need to cancel"), "{said}");
    let (said, next) = heard(&caller(&node, "CS1", &next.unwrap(), "cancel", "").await);
    assert!(said.contains("is cancelled"), "{said}");
    let c = node.conversation_of("smile", "+15551230061").await.unwrap();
    assert_eq!(c["booking"]["status"], "cancelled", "{}", c["booking"]);
    assert!(
        !texts_where(&c, "author", "system")
            .iter()
            .any(|t| t.contains("opt")),
        "no opt-out: {c}"
    );
    let twiml = caller(&node, "CS1", &next.unwrap(), "no that's it", "").await;
    let (said, next) = heard(&twiml);
    assert!(said.starts_with("Thanks for calling"), "{said}");
    assert!(next.is_none() && twiml.contains("<Hangup/>"), "{twiml}");
    // A new call: a yes to the offer in the hours answer books.
    let (_, next) = heard(&caller(&node, "CS2", "/webhooks/twilio/voice", "", "").await);
    let (said, next) =
        heard(&caller(&node, "CS2", &next.unwrap(), "what are your hours", "").await);
    assert!(said.contains("Want me to book you in?"), "{said}");
    // (The service is known from the first call: the time is asked.)
    let (said, next) = heard(&caller(&node, "CS2", &next.unwrap(), "yes please", "").await);
    assert!(
        said.starts_with("What day and time work best for you?"),
        "{said}"
    );
    // A person: announced, then the owner rings.
    let twiml = caller(
        &node,
        "CS2",
        &next.unwrap(),
        "can I talk to a real person",
        "",
    )
    .await;
    let v = verbs(&twiml);
    let say = v.iter().position(|v| v.name == "Say").expect("announced");
    let dial = v.iter().position(|v| v.name == "Dial").expect("rings");
    assert!(say < dial, "{twiml}");
    // What the transcript says was said.
    assert_eq!(
        v[say].text,
        "Let me connect you with someone who can help. One moment."
    );
    let c = node.conversation_of("smile", "+15551230061").await.unwrap();
    let bot = texts_where(&c, "author", "bot");
    assert_eq!(bot.last().map(|t| t.as_str()), Some(v[say].text.as_str()));
    // Nobody answers: the caller is told before the call ends.
    let mut p = vec![
        ("CallSid", "CS2"),
        ("AccountSid", SID),
        ("From", "+15551230061"),
        ("To", "+15557654321"),
        ("CallStatus", "in-progress"),
        ("Direction", "inbound"),
        ("DialCallStatus", "no-answer"),
    ];
    let (s, twiml) = node
        .twilio(TOKEN, "/webhooks/twilio/voice/dial-status", &p)
        .await;
    assert_eq!(s, 200, "{twiml}");
    let (said, _) = heard(&twiml);
    assert!(
        said.starts_with("Sorry, nobody could take your call right now."),
        "{said}"
    );
    assert!(twiml.contains("<Hangup/>"), "{twiml}");
    p.clear();
}

/// The flow on the phone: a caller books a cleaning by speech and
/// confirms with a key, hears the hours, mentions someone without being
/// transferred, and reaches a person by asking; silence is asked about
/// once, with the keypad offered, then goes to a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_books_asks_and_reaches_a_person_through_the_voice_assistant() {
    let fake = FakeTwilio::start().await;
    let cfg = config(&fake.base).replace(
        "gateway_token = \"gw-smile\"\n",
        "gateway_token = \"gw-smile\"\nvoice_assistant = true\nowner_phone = \"+15550009999\"\n",
    );
    let node = Node::start_with_config(&cfg, &["--simulated-clock", NOW]);
    let twiml = caller(&node, "CA1", "/webhooks/twilio/voice", "", "").await;
    let (said, next) = heard(&twiml);
    assert!(
        said.starts_with("Hi, thanks for calling Bright Smile Dental."),
        "{said}"
    );
    // It listens as the flow's [voice] says: language, hints, silence.
    let gather = verbs(&twiml)
        .into_iter()
        .find(|v| v.name == "Gather")
        .expect("it listens");
    assert_eq!(gather.attrs["input"], "speech dtmf");
    assert_eq!(gather.attrs["language"], "en-US");
    assert_eq!(
        gather.attrs["hints"],
        "cleaning,whitening,checkup,Bright Smile,reschedule"
    );
    assert_eq!(gather.attrs["timeout"], "6");
    let next = next.expect("it listens");
    // Booking by speech, in the flow's words made for the ear.
    let (said, next) = heard(
        &caller(
            &node,
            "CA1",
            &next,
            "I'd like a cleaning thursday at 3pm",
            "",
        )
        .await,
    );
    assert!(said.contains("Thu Mar 5 at 3:00 PM"), "{said}");
    assert!(said.contains("Say yes or press 1 to confirm"), "{said}");
    assert!(!said.contains("Reply C"), "{said}");
    // Confirmed with a key.
    let (said, next) = heard(&caller(&node, "CA1", &next.unwrap(), "", "1").await);
    assert!(
        said.starts_with("You're confirmed for Thu Mar 5 at 3:00 PM"),
        "{said}"
    );
    assert!(
        said.ends_with("If you need another time, just call or text us. Is there anything else I can help with?"),
        "worded for a caller: {said}"
    );
    assert!(!said.to_lowercase().contains("reply"), "{said}");
    let c = node.conversation_of("smile", "+15551230061").await.unwrap();
    assert_eq!(c["booking"]["status"], "confirmed", "{}", c["booking"]);
    assert_eq!(c["booking"]["start"], "2026-03-05T20:00:00.000Z");
    // The hours, as the flow answers them.
    let (said, next) =
        heard(&caller(&node, "CA1", &next.unwrap(), "what are your hours", "").await);
    assert!(said.starts_with("We're open Monday to Friday"), "{said}");
    // Already booked: no offer to book, the visit instead.
    assert!(!said.contains("book you in"), "{said}");
    assert!(said.contains("See you Thu Mar 5 at 3:00 PM!"), "{said}");
    // Someone else is mentioned: no transfer.
    let twiml = caller(
        &node,
        "CA1",
        &next.unwrap(),
        "I'm calling for someone else too",
        "",
    )
    .await;
    assert!(!twiml.contains("<Dial"), "{twiml}");
    let (_, next) = heard(&twiml);
    // Silence: asked once more with the keypad, then a person.
    let next = next.unwrap();
    let silent = verbs(&twiml)
        .into_iter()
        .find(|v| v.name == "Redirect")
        .expect("silence goes somewhere")
        .text;
    assert_eq!(silent, format!("{next}&silence=1"));
    // (Booked: 1 means yes here, so no menu; 0 is a person.)
    let (said, _) = heard(&caller(&node, "CA1", &silent, "", "").await);
    assert!(said.contains("press 0 to talk to a person"), "{said}");
    // Served on this call, nothing left to answer: let go politely.
    let twiml = caller(&node, "CA1", &format!("{next}&silence=2"), "", "").await;
    assert!(!twiml.contains("<Dial"), "{twiml}");
    assert!(twiml.contains("Goodbye.</Say><Hangup/>"), "{twiml}");
    // A new call starts from what is known; a caller who says nothing
    // at all is put through to a person after the second silence.
    let (said, _) = heard(&caller(&node, "CA2", "/webhooks/twilio/voice", "", "").await);
    assert!(
        said.contains("I see your cleaning is booked for Thu Mar 5 at 3:00 PM."),
        "{said}"
    );
    let twiml = caller(
        &node,
        "CA2",
        "/webhooks/twilio/voice/gather?turn=1&silence=2",
        "",
        "",
    )
    .await;
    assert!(
        twiml.contains(">+15550009999</Number>"),
        "the owner rings: {twiml}"
    );
    // Asking for a person transfers at once.
    let twiml = caller(
        &node,
        "CA2",
        "/webhooks/twilio/voice/gather?turn=1",
        "can I speak with a real person",
        "",
    )
    .await;
    assert!(twiml.contains(">+15550009999</Number>"), "{twiml}");
    // Whoever answers hears what is known in a sentence or two.
    let whisper = verbs(&twiml)
        .into_iter()
        .find(|v| v.name == "Number")
        .and_then(|v| v.attrs.get("url").cloned())
        .expect("a warm transfer");
    let w = caller(&node, "CA3", &whisper, "", "").await;
    let (said, _) = heard(&w);
    assert!(said.starts_with("Call from +15551230061."), "{said}");
    assert!(
        said.contains("Asked about: hours."),
        "the last thing asked: {said}"
    );
    assert!(
        said.contains("Booked: cleaning, Thu Mar 5 at 3:00 PM."),
        "{said}"
    );
    assert!(said.contains("can I speak with a real person"), "{said}");
    // Keys and one-word answers are not read to them.
    assert!(!said.contains("pressed"), "{said}");
    assert!(!said.contains("On the phone: yes"), "{said}");
    let c = node.conversation_of("smile", "+15551230061").await.unwrap();
    // The thread holds the call as it went, keys included.
    let turns: Vec<String> = texts_where(&c, "channel", "voice")
        .into_iter()
        .filter(|t| !t.starts_with('['))
        .collect();
    for said in [
        "I'd like a cleaning thursday at 3pm",
        "yes (pressed 1)",
        "what are your hours",
        "can I speak with a real person",
    ] {
        assert!(turns.iter().any(|t| t == said), "{said}: {turns:?}");
    }
}

/// The call the fake Twilio was asked to place to `to`, once it was.
async fn call_to(fake: &FakeTwilio, to: &str) -> std::collections::HashMap<String, String> {
    for _ in 0..500 {
        let call = fake
            .state
            .lock()
            .unwrap()
            .accepted
            .iter()
            .find(|(_, f)| f["_resource"] == "Calls" && f["To"] == to)
            .map(|(_, f)| f.clone());
        if let Some(c) = call {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no call to {to}");
}

/// The TwiML each update of call `sid` gave it, in order.
fn updates_of(fake: &FakeTwilio, sid: &str) -> Vec<String> {
    fake.state
        .lock()
        .unwrap()
        .accepted
        .iter()
        .filter(|(_, f)| f["_resource"] == "CallUpdate" && f["_call"] == sid)
        .map(|(_, f)| f["Twiml"].clone())
        .collect()
}

/// The business calls a customer (a message on the voice channel). A
/// person answering hears it and the call goes on through the flow: they
/// book by speech and confirm with a key. A voicemail answering another
/// call (detected beside the call, asynchronously) gets the flow's
/// voicemail through a call update, and the flow's unanswered-call text
/// follows by SMS, once. A voicemail never promises a text the gate will
/// not send: a customer who opted out of texts is asked to call back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_business_places_converses_with_a_person_and_leaves_a_voicemail_for_a_machine() {
    let (fake, node) = start().await;
    let (pat, quinn, riley) = ("+15551230071", "+15551230072", "+15551230073");
    for who in [pat, quinn, riley] {
        let enc = who.replace('+', "%2B");
        // They asked to be called and texted (a web form); Riley then
        // opted out of texts.
        for channel in ["voice", "sms"] {
            let status = match (who == riley, channel) {
                (true, "sms") => "opted_out",
                _ => "opted_in",
            };
            let consent = json!({"status": status, "channel": channel,
                "purpose": "conversational", "source": "web_form", "proof": "form 12"});
            let (s, v) = node
                .send_admin(
                    Method::POST,
                    &format!("/api/v1/tenants/smile/contacts/{enc}/consent"),
                    Some(&consent),
                )
                .await;
            assert_eq!(s, 201, "{v}");
        }
        let (s, v) = node
            .send_admin(
                Method::POST,
                &format!("/api/v1/tenants/smile/contacts/{enc}/messages"),
                Some(&json!({"text": "Hi, this is Ava from Bright Smile Dental: you're due for a cleaning.",
                             "channel": "voice", "purpose": "conversational"})),
            )
            .await;
        assert_eq!((s, v["decision"].as_str()), (202, Some("sent")), "{v}");
    }
    // A person answers. Detection runs beside the call (asynchronous
    // AMD): the call talks at once, and who answered is posted apart.
    let call = call_to(&fake, pat).await;
    assert_eq!(call["MachineDetection"], "DetectMessageEnd");
    assert_eq!(call["AsyncAmd"], "true");
    assert_eq!(call["AsyncAmdStatusCallbackMethod"], "POST");
    assert!(
        call["AsyncAmdStatusCallback"]
            .starts_with(&format!("{PUBLIC_URL}/webhooks/twilio/voice/amd?c=")),
        "{call:?}"
    );
    let url = call["Url"].strip_prefix(PUBLIC_URL).unwrap().to_owned();
    let leg = |sid: &'static str, answered_by: &'static str| {
        vec![
            ("CallSid", sid),
            ("AccountSid", SID),
            ("From", "+15557654321"),
            (
                "To",
                match sid {
                    "CA71" => pat,
                    "CA72" => quinn,
                    _ => riley,
                },
            ),
            ("CallStatus", "in-progress"),
            ("Direction", "outbound-api"),
            ("AnsweredBy", answered_by),
        ]
    };
    let (s, twiml) = node.twilio(TOKEN, &url, &leg("CA71", "human")).await;
    assert_eq!(s, 200, "{twiml}");
    let (said, next) = heard(&twiml);
    assert_eq!(
        said,
        "Hi, this is Ava from Bright Smile Dental: you're due for a cleaning."
    );
    let next = next.expect("the call listens");
    let mut turn = leg("CA71", "human");
    turn.push((
        "SpeechResult",
        "oh great, can I get a cleaning thursday at 10am",
    ));
    let (_, twiml) = node.twilio(TOKEN, &next, &turn).await;
    let (said, next) = heard(&twiml);
    assert!(said.contains("Thu Mar 5 at 10:00 AM"), "{said}");
    let mut key = leg("CA71", "human");
    key.push(("Digits", "1"));
    let (_, twiml) = node.twilio(TOKEN, &next.unwrap(), &key).await;
    let (said, _) = heard(&twiml);
    assert!(
        said.starts_with("You're confirmed for Thu Mar 5 at 10:00 AM"),
        "{said}"
    );
    let c = node.conversation_of("smile", pat).await.unwrap();
    assert_eq!(c["booking"]["status"], "confirmed", "{}", c["booking"]);

    // A machine answers the other call. The call starts talking as for a
    // person; once the machine's greeting has ended, Twilio posts who
    // answered, and the call in progress is given the voicemail (a call
    // update), then the text follows.
    let call = call_to(&fake, quinn).await;
    let url = call["Url"].strip_prefix(PUBLIC_URL).unwrap().to_owned();
    let amd = call["AsyncAmdStatusCallback"]
        .strip_prefix(PUBLIC_URL)
        .unwrap()
        .to_owned();
    let mut answered = leg("CA72", "");
    answered.retain(|(k, _)| *k != "AnsweredBy");
    let (s, twiml) = node.twilio(TOKEN, &url, &answered).await;
    assert_eq!(s, 200, "{twiml}");
    let (said, next) = heard(&twiml);
    assert_eq!(
        said,
        "Hi, this is Ava from Bright Smile Dental: you're due for a cleaning."
    );
    assert!(next.is_some(), "it listens until told otherwise");
    assert!(updates_of(&fake, "CA72").is_empty());
    // Twilio cannot take the update at first: 503, and the verdict is
    // posted again; one voicemail recorded, one text.
    fake.state.lock().unwrap().fail_updates = 1;
    let (s, body) = node
        .twilio(TOKEN, &amd, &leg("CA72", "machine_end_beep"))
        .await;
    assert_eq!(s, 503, "{body}");
    assert!(updates_of(&fake, "CA72").is_empty());
    let (s, body) = node
        .twilio(TOKEN, &amd, &leg("CA72", "machine_end_beep"))
        .await;
    assert_eq!(s, 200, "{body}");
    let updates = updates_of(&fake, "CA72");
    assert_eq!(updates.len(), 1, "the call was given its voicemail");
    for twiml in &updates {
        let v = verbs(twiml);
        assert!(v.iter().all(|v| v.name != "Gather"), "{twiml}");
        assert!(v.iter().any(|v| v.name == "Hangup"), "{twiml}");
        let (said, _) = heard(twiml);
        assert!(
            said.ends_with(
                "This is Ava at Bright Smile Dental, sorry we missed you. We'll follow up by text."
            ),
            "{said}"
        );
    }
    // A person answering a third call: the verdict changes nothing.
    let (s, _) = node
        .twilio(TOKEN, &amd.replace("m=", "m=9"), &leg("CA71", "human"))
        .await;
    assert_eq!(s, 200);
    assert!(updates_of(&fake, "CA71").is_empty());
    let text = texted(&fake, |b| b.contains("we just tried to call you")).await;
    assert!(text.starts_with("Hi"), "{text}");
    let c = node.conversation_of("smile", quinn).await.unwrap();
    let sms_sent = texts_where(&c, "channel", "sms");
    assert_eq!(sms_sent.len(), 1, "{sms_sent:?}");
    assert!(texts_where(&c, "author", "system")
        .iter()
        .any(|t| t == "[voicemail: the call was answered by a machine]"));

    // Riley opted out of texts: the voicemail asks for a call back, and
    // no text reaches the provider.
    let call = call_to(&fake, riley).await;
    let amd = call["AsyncAmdStatusCallback"]
        .strip_prefix(PUBLIC_URL)
        .unwrap()
        .to_owned();
    let (s, body) = node
        .twilio(TOKEN, &amd, &leg("CA73", "machine_end_silence"))
        .await;
    assert_eq!(s, 200, "{body}");
    let updates = updates_of(&fake, "CA73");
    assert_eq!(updates.len(), 1);
    let (said, _) = heard(&updates[0]);
    assert!(
        said.ends_with("sorry we missed you. Please call us back when you can."),
        "{said}"
    );
    let texts_to_riley = fake
        .state
        .lock()
        .unwrap()
        .accepted
        .iter()
        .filter(|(_, f)| f["_resource"] == "Messages" && f["To"] == riley)
        .count();
    assert_eq!(texts_to_riley, 0);
}

/// A lead who asked for a person is the person's to call: crossing the
/// scoring threshold while they wait in the queue places no automated
/// call (one was placed that nobody asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_waiting_for_a_person_gets_no_automated_call() {
    let fake = FakeTwilio::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = lead_calling_node(&fake, dir.path());
    say(
        &node,
        "harbor",
        "sms",
        JORDAN,
        "can I talk to a person",
        "p0",
    )
    .await;
    let (_, q) = node.get_admin("/api/v1/tenants/harbor/queue").await;
    assert_eq!(q["waiting"], 1, "{q}");
    qualify(&node).await;
    let c = node.conversation_of("harbor", JORDAN).await.unwrap();
    assert_eq!(
        c["captured"]["score"], 70.0,
        "the threshold was crossed: {c}"
    );
    assert!(
        texts_where(&c, "channel", "voice").is_empty(),
        "no call: {c}"
    );
    let calls = fake
        .state
        .lock()
        .unwrap()
        .accepted
        .iter()
        .filter(|(_, f)| f["_resource"] == "Calls")
        .count();
    assert_eq!(calls, 0);
    let (_, q) = node.get_admin("/api/v1/tenants/harbor/queue").await;
    assert_eq!(q["waiting"], 1, "still the person's: {q}");
}

/// The cadence's call step is not placed while the conversation waits
/// for a person (the business handed it over after the first text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cadence_places_no_call_while_a_person_has_the_conversation() {
    let (fake, node) = start().await;
    say(
        &node,
        "smile",
        "sms",
        JORDAN,
        "Hi, I'm Dana. I'd like to book a cleaning",
        "d1",
    )
    .await;
    node.advance(2.0 * 3600.0).await;
    texted(&fake, |b| b.starts_with("Just checking in:")).await;
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    let id = c["id"].as_str().unwrap().to_owned();
    let (s, v) = node
        .send_admin(
            Method::POST,
            &format!("/api/v1/conversations/{id}/escalate"),
            Some(&json!({"reason": "the owner wants to call her herself"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    node.advance(24.0 * 3600.0).await;
    let c = node.conversation_of("smile", JORDAN).await.unwrap();
    assert!(texts_where(&c, "channel", "voice").is_empty(), "{c}");
    let calls = fake
        .state
        .lock()
        .unwrap()
        .accepted
        .iter()
        .filter(|(_, f)| f["_resource"] == "Calls")
        .count();
    assert_eq!(calls, 0);
}
