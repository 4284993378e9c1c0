use super::*;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn meta() -> ReplicaMeta {
    ReplicaMeta {
        tenant: "clinic-01".into(),
        contact: "+15551234567".into(),
        epoch: 3,
        owner: "n2".into(),
        last_seq: 41,
        unfolded: 5,
    }
}

/// A replica row written before the header (bare bincode) still
/// reads, even one whose first byte is the header's kind byte (a
/// tenant name of 9 bytes); rows are now written headed, checksummed
/// postcard, and read back; a damaged headed row is not read as a
/// bare one.
#[test]
fn replica_rows_of_before_and_now_read_back() {
    let bare = std::fs::read(fixture("replica_meta_bare_bincode.bin")).unwrap();
    assert_eq!(bare[0], codec::Kind::ReplicaMeta as u8);
    assert_eq!(decode_meta(&bare).unwrap(), meta());
    let now = encode_meta(&meta());
    let path = fixture("replica_meta_v1.bin");
    if std::env::var_os("THREADLINE_WRITE_FIXTURES").is_some() && !path.exists() {
        std::fs::write(&path, &now).unwrap();
    }
    let golden = std::fs::read(&path).unwrap();
    assert_eq!(golden, now, "the writer's bytes changed");
    assert_eq!(decode_meta(&golden).unwrap(), meta());
    let mut damaged = golden.clone();
    let at = damaged.len() - 6;
    damaged[at] ^= 0x40;
    assert!(decode_meta(&damaged).is_err());
}
