//! Phone numbers as customer identity: every channel's form of a number
//! (`+1 (555) 123-4567`, WhatsApp's `15551234567`) becomes one E.164 key.

use phonenumber::{country, Mode};

/// `+` and 8 to 15 digits, not starting with 0.
pub fn is_e164(s: &str) -> bool {
    let Some(d) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

/// The E.164 form (`+15551234567`) of a number written in any common way;
/// numbers without a country code are read as North American. `None` when
/// it is not a phone number.
pub fn normalize(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let n = phonenumber::parse(Some(country::Id::US), s).ok()?;
    let e164 = n.format().mode(Mode::E164).to_string();
    is_e164(&e164).then_some(e164)
}

/// A WhatsApp `wa_id` (the E.164 digits without `+`) as a phone number.
pub fn from_wa_id(wa_id: &str) -> Option<String> {
    if wa_id.is_empty() || !wa_id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    normalize(&format!("+{wa_id}"))
}

/// The first phone number written in a chat message ("my number is
/// (555) 123-4567"), if any.
pub fn find_in_text(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'+' || c.is_ascii_digit() || c == b'(' {
            let start = i;
            let mut digits = 0;
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_digit() || b"+()-. ".contains(&bytes[j])) {
                if bytes[j].is_ascii_digit() {
                    digits += 1;
                }
                j += 1;
            }
            if (10..=15).contains(&digits) {
                if let Some(n) = normalize(text[start..j].trim()) {
                    return Some(n);
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_ways_of_writing_a_number_are_one_identity() {
        for s in [
            "+15551234567",
            "+1 (555) 123-4567",
            "(555) 123-4567",
            "555.123.4567",
            "1-555-123-4567",
        ] {
            assert_eq!(normalize(s).as_deref(), Some("+15551234567"), "{s}");
        }
        assert_eq!(from_wa_id("15551234567").as_deref(), Some("+15551234567"));
        assert_eq!(from_wa_id("447700900123").as_deref(), Some("+447700900123"));
        assert_eq!(normalize("hello"), None);
        assert_eq!(from_wa_id("abc123"), None);
    }

    #[test]
    fn numbers_are_found_in_chat_text() {
        assert_eq!(
            find_in_text("sure, my number is (555) 123-4567 thanks").as_deref(),
            Some("+15551234567")
        );
        assert_eq!(
            find_in_text("call +44 7700 900123").as_deref(),
            Some("+447700900123")
        );
        assert_eq!(find_in_text("I need 2 cleanings at 10:30"), None);
    }
}
