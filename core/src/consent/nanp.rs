//! Where a phone number is, for the rules of its place: a US state (by
//! area code, from `data/nanp-area-codes.tsv`, built by
//! `tools/nanp-area-codes.py` from libphonenumber's geocoding data), a US
//! territory, Canada, or another country (from the phone-number metadata
//! of the `phonenumber` crate).

use std::collections::HashMap;
use std::sync::OnceLock;

const TABLE: &str = include_str!("../../data/nanp-area-codes.tsv");

/// Where a number is, as far as its digits tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A US number whose area code belongs to a state (or DC).
    UsState(&'static str),
    /// A US number of no one state (toll-free, non-geographic codes).
    UsNonGeographic,
    /// A US territory of its own NANP region: PR, VI, GU, AS, MP.
    UsTerritory(&'static str),
    /// Any other country (ISO 3166 code), Canada included.
    Abroad(String),
}

/// (country, state or province) of each area code in the table.
fn table() -> &'static HashMap<&'static str, (&'static str, &'static str)> {
    static T: OnceLock<HashMap<&'static str, (&'static str, &'static str)>> = OnceLock::new();
    T.get_or_init(|| {
        TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((f.next()?, (f.next()?, f.next()?)))
            })
            .collect()
    })
}

/// The state or province of a North American area code (`"212"` →
/// `("US", "NY")`), when the table has it.
pub fn area_code(npa: &str) -> Option<(&'static str, &'static str)> {
    table().get(npa).copied()
}

const TERRITORIES: [&str; 5] = ["PR", "VI", "GU", "AS", "MP"];

/// Where the E.164 number `e164` is; `None` when it is not a number.
pub fn place(e164: &str) -> Option<Place> {
    let n = phonenumber::parse(None, e164).ok()?;
    let Some(country) = n.country().id() else {
        // A number the metadata cannot place in one region: its calling
        // code still says whether it is North American.
        return Some(match n.country().code() {
            1 => by_area_code(e164)?,
            code => Place::Abroad(format!("+{code}")),
        });
    };
    let id: &str = country.as_ref();
    if id != "US" {
        return Some(match TERRITORIES.iter().find(|t| **t == id) {
            Some(t) => Place::UsTerritory(t),
            None => Place::Abroad(id.to_owned()),
        });
    }
    by_area_code(e164)
}

fn by_area_code(e164: &str) -> Option<Place> {
    let npa = e164.strip_prefix("+1")?.get(..3)?;
    Some(match area_code(npa) {
        Some(("US", state)) => Place::UsState(state),
        Some((country, _)) => Place::Abroad(country.to_owned()),
        None => Place::UsNonGeographic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every state and DC has area codes, and a few well-known ones are
    /// where they belong (overlays included).
    #[test]
    fn every_state_has_area_codes_and_known_ones_are_placed() {
        const STATES: [&str; 51] = [
            "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL",
            "IN", "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE",
            "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD",
            "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY",
        ];
        for s in STATES {
            assert!(
                table().values().any(|(c, st)| *c == "US" && *st == s),
                "no area code for {s}"
            );
        }
        for (npa, state) in [
            ("212", "NY"),
            ("332", "NY"),
            ("917", "NY"),
            ("305", "FL"),
            ("645", "FL"),
            ("945", "TX"),
            ("206", "WA"),
            ("202", "DC"),
            ("808", "HI"),
            ("907", "AK"),
            ("472", "NC"),
            ("227", "MD"),
        ] {
            assert_eq!(area_code(npa), Some(("US", state)), "{npa}");
        }
        assert_eq!(area_code("416"), Some(("CA", "ON")));
        assert_eq!(area_code("000"), None);
    }

    #[test]
    fn numbers_are_placed_by_country_territory_and_state() {
        assert_eq!(place("+12125550100"), Some(Place::UsState("NY")));
        assert_eq!(place("+18005550100"), Some(Place::UsNonGeographic));
        assert_eq!(place("+17875550100"), Some(Place::UsTerritory("PR")));
        assert_eq!(place("+16715550100"), Some(Place::UsTerritory("GU")));
        assert_eq!(place("+14165550100"), Some(Place::Abroad("CA".into())));
        assert_eq!(place("+18765550100"), Some(Place::Abroad("JM".into())));
        assert_eq!(place("+919876543210"), Some(Place::Abroad("IN".into())));
        assert_eq!(place("+442079460000"), Some(Place::Abroad("GB".into())));
        assert_eq!(place("not a number"), None);
    }
}
