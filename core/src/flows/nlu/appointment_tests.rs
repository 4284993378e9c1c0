use super::*;

#[test]
fn small_talk_is_told_apart_from_requests() {
    use SmallTalk::*;
    for (text, want) in [
        ("thx", Some(Thanks)),
        ("Thank you so much!!", Some(Thanks)),
        ("ok thanks", Some(Thanks)),
        ("ty", Some(Thanks)),
        ("ok", Some(Ack)),
        ("got it", Some(Ack)),
        ("👍", Some(Ack)),
        ("bye!", Some(Bye)),
        ("see you thursday", Some(Bye)),
        ("have a good day", Some(Bye)),
        ("Wait, am I talking to a robot?", Some(AsksIfBot)),
        ("r u a bot", Some(AsksIfBot)),
        ("is this automated?", Some(AsksIfBot)),
        ("are you real?", Some(AsksIfBot)),
        ("thanks, can I book a cleaning", None),
        ("ok what times do you have tomorrow", None),
        ("is this the real address?", None),
        ("?", None),
    ] {
        assert_eq!(small_talk(text), want, "{text}");
    }
}

#[test]
fn moves_by_an_amount() {
    for (text, want) in [
        ("can we push it back an hour?", Some(60)),
        ("push it back 2 hours", Some(120)),
        ("could we do 30 minutes earlier", Some(-30)),
        ("half an hour later please", Some(30)),
        ("an hour earlier?", Some(-60)),
        ("can we move it", None),
        ("I'll be an hour", None),
    ] {
        assert_eq!(shift_minutes(text), want, "{text}");
    }
}

#[test]
fn requests_about_an_appointment_in_plain_words() {
    use AppointmentAsk::*;
    for (text, want) in [
        ("I'd like to move my appointment", Some(Reschedule)),
        ("reschedule to friday at 3pm please", Some(Reschedule)),
        ("can we push it back an hour?", Some(Reschedule)),
        ("can we do friday instead", Some(Reschedule)),
        ("R", Some(Reschedule)),
        ("Need a different time", Some(Reschedule)),
        ("cancel my appointment", Some(Cancel)),
        ("I can't make it anymore", Some(Cancel)),
        ("I won't be able to make it tomorrow", Some(Cancel)),
        ("sorry, can't come on thursday", Some(Cancel)),
        ("when is my appointment?", Some(When)),
        ("what time is my appointment", Some(When)),
        ("When's my appointment again", Some(When)),
        ("please don't cancel it, see you then", None),
        ("yes", None),
        ("thanks, see you thursday", None),
        ("what are your hours", None),
    ] {
        assert_eq!(appointment_ask(text), want, "{text}");
    }
}
