use super::*;

#[test]
fn size_is_devices_times_instances() {
    let s = Size::new(Some(100), 2, None).unwrap();
    assert_eq!(s.count, 200);
    assert_eq!(s.describe(), "100 devices × 2 instances per device");
    assert_eq!(Size::new(None, 1, Some(7)).unwrap().count, 7);
    assert!(Size::new(Some(0), 2, None).is_err());
    assert!(Size::new(Some(u32::MAX), 2, None).is_err());
    assert!(Size::new(None, 1, None).is_err());
}

#[test]
fn expiry_accepts_durations_dates_and_instants() {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    assert_eq!(parse_expiry("1d", now).unwrap(), "2027-01-16T08:00:00Z");
    assert_eq!(parse_expiry("12h", now).unwrap(), "2027-01-15T20:00:00Z");
    assert_eq!(
        parse_expiry("2026-12-31", now).unwrap(),
        "2026-12-31T23:59:59Z"
    );
    assert_eq!(
        parse_expiry("2026-12-31T10:00:00Z", now).unwrap(),
        "2026-12-31T10:00:00Z"
    );
    for bad in ["soon", "0d", "-3d", "2026-13-01"] {
        assert!(parse_expiry(bad, now).is_err(), "{bad}");
    }
}

#[test]
fn plain_http_only_to_loopback() {
    let args = |url: &str| ServerArgs {
        url: Some(url.to_owned()),
        user: None,
        credentials_file: None,
        json: false,
    };
    assert!(base_url(&args("http://127.0.0.1:8600")).is_ok());
    assert!(base_url(&args("http://[::1]:8600/")).is_ok());
    let e = base_url(&args("http://localhost:8600/")).unwrap_err();
    assert!(
        e.message.contains("http://127.0.0.1:8600/"),
        "{}",
        e.message
    );
    assert!(base_url(&args("https://ems.example.com")).is_ok());
    let e = base_url(&args("http://ems.example.com")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Config);
    assert!(base_url(&args("ftp://x.example")).is_err());
}

#[test]
fn tables_align() {
    let record = json!({"id": "a", "state": "ENABLED", "count": 2, "usedCount": 1});
    let out = registration_table(&[record]);
    assert!(
        out.lines().next().unwrap().starts_with("ID  STATE"),
        "{out}"
    );
    assert!(out.contains("1/2"), "{out}");
}
