//! What a cluster configuration exposes to others: key sets stored in etcd in the clear, plain
//! HTTP to an etcd beyond this host, and secret files (the etcd password, the TLS client key)
//! that every user of the host can read. Each is a warning, said the same way by
//! `check-config`, `status`, the daemon's `STATUS=`, its metrics and its log, for as long as
//! the configuration stays so.
//!
//! Invariant: it only looks at the settings and stats the named files; it never reads a
//! secret. (The seal key file is stricter: [`crate::seal::SealKey::load`] refuses one that
//! others can read.)

use crate::config::ClusterSettings;
use crate::core::problem::{Code, Problem};
use std::path::Path;

/// Every warning `s` deserves, in a stable order.
pub fn exposures(s: &ClusterSettings) -> Vec<Problem> {
    let mut out = Vec::new();
    if s.insecure_unsealed {
        let why = match &s.seal_key_file {
            None => format!(
                "[cluster] insecure_unsealed: key sets sit in etcd in the clear; anyone who can \
                 read {}/ or an etcd backup can mint tokens (set seal_key_file)",
                s.prefix
            ),
            Some(_) => "[cluster] insecure_unsealed with a seal key: unsealed key sets are \
                        still taken (remove it once `fernetd cluster seal` has sealed the \
                        cluster's key sets)"
                .to_string(),
        };
        out.push(Problem::new(Code::ClusterUnsealed, why));
    }
    for e in s.endpoints.iter().filter(|e| plain_beyond_host(e)) {
        out.push(Problem::new(
            Code::EtcdPlaintext,
            format!(
                "[cluster] endpoint {e} is plain HTTP beyond this host: the etcd password and \
                 every value cross the network unencrypted (use https:// and ca_file)"
            ),
        ));
    }
    // The seal key is refused at start and reload when others can get at it; a running
    // daemon learns of a later chmod here.
    for (path, mode) in s
        .seal_key_files
        .iter()
        .filter_map(|p| Some((p, accessible(p, 0o077)?)))
    {
        out.push(Problem::new(
            Code::SecretReadable,
            format!(
                "[cluster] {} {}: mode {mode:04o} lets others than its owner at the \
                 seal key, which opens every stored key set (chmod 600; a restart or reload \
                 refuses it as it is)",
                s.seal_field(),
                path.display()
            ),
        ));
    }
    let secrets = [
        ("password_file", s.password_file.as_deref()),
        ("key_file", s.key_file.as_deref()),
    ];
    for (field, path) in secrets {
        if let Some(mode) = path.and_then(|p| accessible(p, 0o007)) {
            let path = path.map(Path::display).map(|d| d.to_string());
            out.push(Problem::new(
                Code::SecretReadable,
                format!(
                    "[cluster] {field} {}: mode {mode:04o} lets every user of this host at it \
                     (chmod o-rwx)",
                    path.unwrap_or_default()
                ),
            ));
        }
    }
    out
}

/// The file's mode when it has any of the permission bits in `mask`.
fn accessible(path: &Path, mask: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(path).ok()?.mode() & 0o7777;
    (mode & mask != 0).then_some(mode)
}

/// True for an `http://` endpoint whose host is not a loopback name or address.
fn plain_beyond_host(endpoint: &str) -> bool {
    let Some(rest) = endpoint.trim().strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        // [::1]:2379
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return false;
    }
    !host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_are_not_plaintext_beyond_the_host() {
        for e in [
            "http://127.0.0.1:2379",
            "http://127.3.4.5:2379",
            "http://localhost:2379",
            "http://[::1]:2379",
            "http://[::ffff:127.0.0.1]:2379",
            "http://localhost.:2379",
            "http://localhost",
            "https://10.0.0.1:2379",
        ] {
            assert!(!plain_beyond_host(e), "{e}");
        }
        for e in [
            "http://10.0.0.1:2379",
            "http://etcd.example.com:2379",
            "http://[fe80::1]:2379",
            "http://127.0.0.1.example.com:2379",
            "http://0.0.0.0:2379",
        ] {
            assert!(plain_beyond_host(e), "{e}");
        }
    }

    #[test]
    fn each_exposure_is_named() {
        let t = tempfile::tempdir().unwrap();
        let pw = t.path().join("pw");
        std::fs::write(&pw, "secret").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let section: crate::config::ClusterSection = toml::from_str(&format!(
            "endpoints = [\"http://10.0.0.1:2379\", \"http://127.0.0.1:2379\"]\n\
             insecure_unsealed = true\nusername = \"u\"\npassword_file = \"{}\"\n",
            pw.display()
        ))
        .unwrap();
        let found = exposures(&section.settings(&Default::default()));
        let codes: Vec<&Code> = found.iter().map(|p| &p.code).collect();
        assert_eq!(
            codes,
            [
                &Code::ClusterUnsealed,
                &Code::EtcdPlaintext,
                &Code::SecretReadable
            ]
        );
        assert!(found[1].message.contains("http://10.0.0.1:2379"));
        assert!(
            found[2].message.contains("mode 0644"),
            "{}",
            found[2].message
        );
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
        let found = exposures(&section.settings(&Default::default()));
        assert_eq!(found.len(), 2);
    }
}
