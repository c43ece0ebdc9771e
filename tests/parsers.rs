//! No input makes fernetd panic: every parser of outside input (durations, schedules, the TOML
//! config, keystone.conf, listen addresses, key names, `state.json`, the etcd key set encoding)
//! gets arbitrary bytes and arbitrary well-formed values, and what parses is then used the way
//! fernetd uses it (planned, judged, rotated). A bounded number of cases each.

mod common;
use fernetd::core::clock::Now;
use proptest::prelude::*;
use std::path::Path;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn text_parsers_never_panic(s in any::<String>()) {
        let _ = fernetd::core::duration::parse(&s);
        let _ = fernetd::config::parse_listen(&s);
        let _ = fernetd::repository::scan::python_int(&s);
        if let Ok(schedule) = s.parse::<fernetd::core::schedule::Schedule>() {
            let now = Now::read();
            let _ = schedule.next_rotation(None, &now);
        }
        let _ = fernetd::config::FileConfig::parse(&s, Path::new("fernetd.toml"));
    }

    #[test]
    fn durations_and_schedules_from_any_numbers_never_panic(
        n in any::<u64>(),
        unit in prop::sample::select(vec!["", "s", "m", "h", "d", "w"]),
        e in any::<u64>(),
        w in any::<u64>(),
        m in any::<u64>(),
        keys in prop::option::of(2u64..1000),
    ) {
        let text = format!("{n}{unit}");
        let parsed = fernetd::core::duration::parse(&text);
        if let Ok(d) = parsed {
            prop_assert!(d <= fernetd::core::duration::MAX);
            let _ = fernetd::core::duration::format(d);
        }
        // A configuration with those lifetimes and an interval schedule: it loads (bounded)
        // or is refused in one line, and what loads can be planned.
        let toml = format!(
            "[tokens]\nexpiration = {e}\nallow_expired_window = {w}\nmargin = {m}\nschedule = \"{text}\"\n{}",
            keys.map(|k| format!("max_active_keys = {k}\n")).unwrap_or_default()
        );
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f.toml");
        std::fs::write(&f, format!("[keystone]\nconfig = \"/dev/null\"\n{toml}")).unwrap();
        match fernetd::config::DaemonSettings::inspect(&Default::default(), Some(&f), chrono::Utc::now()) {
            Ok(_) => {}
            Err(err) => prop_assert!(!err.to_string().contains('\n')),
        }
    }

    #[test]
    fn keystone_conf_never_panics(lines in prop::collection::vec((".{0,12}", ".{0,12}", ".{0,24}"), 0..8)) {
        let mut text = String::new();
        for (section, key, value) in &lines {
            text.push_str(&format!("[{section}]\n{key} = {value}\n"));
        }
        text.push_str("[token]\nexpiration = 99999999999999999999\n");
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("keystone.conf");
        std::fs::write(&f, text).unwrap();
        let _ = fernetd::config::KeystoneConf::load(&f);
    }

    #[test]
    fn key_set_encodings_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = fernetd::core::keyset::KeySet::decode(&bytes);
    }

    /// `state.json` with any bytes, then with well-formed records holding any timestamps and
    /// numbers: read, judged by `status`, and rotated on, it is an answer or one error.
    #[test]
    fn state_files_never_panic(
        junk in prop::collection::vec(any::<u8>(), 0..300),
        secs in prop::collection::vec(-8_000_000_000_000i64..8_000_000_000_000i64, 4),
        numbers in prop::collection::vec(any::<u64>(), 1..4),
        rotations in any::<u64>(),
    ) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("keys");
        let r = dir.to_str().unwrap();
        common::fernetd_ok(&["setup", "--key-repository", r]);
        let state = dir.join(".fernetd/state.json");
        let repo = fernetd::repository::Repository::new(&dir, None);
        std::fs::write(&state, &junk).unwrap();
        let _ = repo.history();

        let ts = |s: i64| {
            chrono::DateTime::from_timestamp(s, 0)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        };
        let fp = |n: u64| format!("{:016x}", n);
        let mut keys = serde_json::Map::new();
        for (i, n) in numbers.iter().enumerate() {
            keys.insert(n.to_string(), serde_json::json!({
                "fingerprint": fp(*n),
                "first_seen": ts(secs[i % 4]),
                "promoted": ts(secs[(i + 1) % 4]),
                "demoted": ts(secs[(i + 2) % 4]),
            }));
        }
        let v = serde_json::json!({
            "version": 1,
            "keys": keys,
            "purged": [{"number": numbers[0], "fingerprint": fp(1), "at": ts(secs[3]), "by_fernetd": false, "lost_until": ts(secs[2])}],
            "last_rotation": ts(secs[0]),
            "rotations": rotations,
        });
        std::fs::write(&state, serde_json::to_vec(&v).unwrap()).unwrap();
        let _ = repo.history();
        // `status` and `rotate` through the binary: an exit status, never a panic (101).
        let status = common::fernetd(&["status", "--key-repository", r]);
        prop_assert!(status.code != 101, "status panicked: {}", status.stderr);
        let rotate = common::fernetd(&["rotate", "--key-repository", r]);
        prop_assert!(rotate.code != 101, "rotate panicked: {}", rotate.stderr);
    }
}
