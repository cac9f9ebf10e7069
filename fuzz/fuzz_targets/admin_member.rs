//! The admin API's membership requests: any body, as a urlencoded form or as JSON,
//! through the same parsing `POST /cluster/NAME/members` does, then the member spec.
//! Never panics; an accepted member's instance is bounded and holds no control byte.
#![no_main]
use cadent::api::parse_member_request;
use cadent::config::{Member, MEMBER_INSTANCE_BYTES_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let Ok(form) = parse_member_request(first & 1 == 1, body) else {
        return;
    };
    let server = form.server.unwrap_or_default();
    let spec = match form.instance.as_deref() {
        Some(i) if !i.is_empty() => format!("{server}={i}"),
        _ => server,
    };
    if let Ok(m) = Member::parse(&spec) {
        assert!(m.port != 0 && !m.host.is_empty());
        if let Some(i) = &m.instance {
            assert!(!i.is_empty() && i.len() <= MEMBER_INSTANCE_BYTES_MAX);
            assert!(!i.chars().any(char::is_control), "{i:?}");
        }
        // What `cadent hash` prints is read back as the same member.
        let again = Member::parse(&m.display_hash()).unwrap();
        assert_eq!((again.host, again.port, again.instance), (m.host, m.port, m.instance));
    }
});
