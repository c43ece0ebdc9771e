//! A real etcd member for tests: Debian's etcd-server (installed by scripts/deps), on random
//! loopback ports with a temporary data directory, killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Child,
    pub endpoint: String,
    /// The peer URL, kept so the member can be restarted (restored, wiped) at the same address.
    peer: String,
    dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The member answers /health, healthy or not.
fn answering(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.contains("\"health\":")
}

fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.contains("\"health\":\"true\"")
}

impl Etcd {
    pub fn start() -> Etcd {
        let e = Etcd::launch(None);
        let port: u16 = e.endpoint.rsplit(':').next().unwrap().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !healthy(port) {
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy: {}",
                e.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    /// A member that serves clients over TLS only and requires client certificates.
    pub fn start_tls(certs: &Certs) -> Etcd {
        let e = Etcd::launch(Some(certs));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !e.log().contains("ready to serve client requests") {
            assert!(
                Instant::now() < deadline,
                "etcd (TLS) did not start: {}",
                e.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    /// One member on random loopback ports with a temporary data directory.
    fn launch(tls: Option<&Certs>) -> Etcd {
        let ok = Command::new("etcd")
            .arg("--version")
            .output()
            .map(|o| o.status.success());
        assert!(
            matches!(ok, Ok(true)),
            "etcd is required for the cluster tests (apt-get install etcd-server; scripts/deps does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let c = format!("{scheme}://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let mut cmd = member(dir.path(), &c, &p);
        if let Some(certs) = tls {
            cmd.arg("--cert-file")
                .arg(certs.path("server.crt"))
                .arg("--key-file")
                .arg(certs.path("server.key"))
                .arg("--trusted-ca-file")
                .arg(certs.path("ca.crt"))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        Etcd {
            child,
            endpoint: c,
            peer: p,
            dir,
        }
    }

    /// `etcdctl` against this member; panics with its output when it fails.
    pub fn etcdctl(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint])
            .args(args)
            .output()
            .expect("etcdctl (Debian's etcd-client; scripts/deps installs it)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `etcdctl snapshot save`: the backup an operator takes.
    pub fn snapshot_save(&self, to: &std::path::Path) {
        self.etcdctl(&["snapshot", "save", to.to_str().unwrap()]);
    }

    /// Disaster recovery as etcd documents it: stop the member, `etcdctl snapshot restore` the
    /// backup into a new data directory, start the member on it at the same address.
    pub fn restore(&mut self, snapshot: &std::path::Path) {
        self.stop();
        let data = self.dir.path().join("data");
        std::fs::remove_dir_all(&data).unwrap();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "snapshot",
                "restore",
                snapshot.to_str().unwrap(),
                "--data-dir",
            ])
            .arg(&data)
            .args(["--name", "n0", "--initial-cluster"])
            .arg(format!("n0={}", self.peer))
            .args(["--initial-advertise-peer-urls", &self.peer])
            .output()
            .expect("etcdctl snapshot restore");
        assert!(
            out.status.success(),
            "snapshot restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.respawn();
    }

    /// etcd lost its data: the member starts again, empty, at the same address.
    pub fn wipe(&mut self) {
        self.stop();
        std::fs::remove_dir_all(self.dir.path().join("data")).unwrap();
        self.respawn();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn respawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        self.child = member(self.dir.path(), &self.endpoint, &self.peer)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        let port: u16 = self.endpoint.rsplit(':').next().unwrap().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !healthy(port) {
            assert!(
                Instant::now() < deadline,
                "etcd did not come back: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Runs an etcd-client operation against this member.
    pub fn with_client<T>(&self, f: impl AsyncFnOnce(&mut etcd_client::Client) -> T) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([self.endpoint.as_str()], None)
                .await
                .unwrap();
            f(&mut c).await
        })
    }
}

/// The command for one single-member etcd with its data under `dir`.
fn member(dir: &std::path::Path, client: &str, peer: &str) -> Command {
    let mut cmd = Command::new("etcd");
    cmd.args(["--name", "n0", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args([
            "--initial-cluster",
            &format!("n0={peer}"),
            "--initial-cluster-state",
            "new",
        ]);
    cmd
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real multi-member etcd cluster on loopback; members can be killed and restarted.
pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    clients: Vec<u16>,
    peers: Vec<u16>,
    dir: tempfile::TempDir,
    /// Flags every member starts with (e.g. a small `--quota-backend-bytes`).
    extra: Vec<String>,
}

impl EtcdCluster {
    /// `n` members on random loopback ports. A port picked free can be taken by another test
    /// before etcd binds it: a cluster that is not healthy in 20 s is started again on fresh
    /// ports, three times at most.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, &[])
    }

    /// `start`, every member also given `extra` flags.
    pub fn start_with(n: usize, extra: &[String]) -> EtcdCluster {
        let mut logs = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let clients: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let peers: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let mut c = EtcdCluster {
                members: (0..n).map(|_| None).collect(),
                clients,
                peers,
                dir,
                extra: extra.to_vec(),
            };
            for i in 0..n {
                c.spawn(i);
            }
            if (0..n).all(|i| c.healthy_within(i, Duration::from_secs(20))) {
                return c;
            }
            for i in 0..n {
                let log = std::fs::read_to_string(c.dir.path().join(format!("m{i}.log")));
                let tail: String = log
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ");
                logs.push_str(&format!("\nm{i}: {tail}"));
            }
        }
        panic!("a {n}-member etcd cluster did not become healthy in three tries:{logs}");
    }

    fn healthy_within(&self, i: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !healthy(self.clients[i]) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(j, p)| format!("m{j}=http://127.0.0.1:{p}"))
            .collect();
        let cu = format!("http://127.0.0.1:{}", self.clients[i]);
        let pu = format!("http://127.0.0.1:{}", self.peers[i]);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("m{i}.log")))
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(self.dir.path().join(format!("m{i}")))
            .args(["--listen-client-urls", &cu, "--advertise-client-urls", &cu])
            .args([
                "--listen-peer-urls",
                &pu,
                "--initial-advertise-peer-urls",
                &pu,
            ])
            .args([
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd member");
        self.members[i] = Some(child);
    }

    fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !healthy(self.clients[i]) {
            assert!(
                Instant::now() < deadline,
                "etcd member {i} did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.clients
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// SIGKILL one member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts a killed member from its data directory.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// Waits until the cluster serves requests again (quorum back).
    pub fn wait_quorum(&self, i: usize) {
        self.wait_healthy(i);
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The member runs (it may be stopped by SIGSTOP).
    pub fn running(&self, i: usize) -> bool {
        self.members[i].is_some()
    }

    /// Sends `sig` to one running member (SIGSTOP, SIGCONT, SIGTERM).
    pub fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.members[i] {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// `etcdctl` against every member's endpoint (etcdctl fails over among them), bounded by
    /// its own timeouts: the exit status and the output (stdout, then stderr).
    pub fn etcdctl(&self, args: &[&str], input: Option<&[u8]>) -> (bool, String) {
        self.etcdctl_at(&self.endpoints().join(","), args, input)
    }

    /// `etcdctl` against `endpoints` (comma-separated).
    pub fn etcdctl_at(
        &self,
        endpoints: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> (bool, String) {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                endpoints,
                "--dial-timeout=2s",
                "--command-timeout=5s",
            ])
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let Ok(mut child) = cmd.spawn() else {
            return (false, "etcdctl did not start".into());
        };
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            let _ = stdin.write_all(data);
        }
        match child.wait_with_output() {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    }

    /// `etcdctl snapshot save` from the first running member that answers: the backup an
    /// operator takes. False when no member could give one.
    pub fn snapshot_save(&self, to: &std::path::Path) -> bool {
        (0..self.members.len())
            .filter(|&i| self.running(i))
            .any(|i| {
                let e = format!("http://127.0.0.1:{}", self.clients[i]);
                self.etcdctl_at(&e, &["snapshot", "save", &to.display().to_string()], None)
                    .0
            })
    }

    /// Disaster recovery as etcd's documentation describes it ("Restoring a cluster"): every
    /// member stopped, the same snapshot restored into a new data directory for each member
    /// (`etcdctl snapshot restore` with its name, the initial cluster and its peer URL), every
    /// member started on it at its old address.
    pub fn restore(&mut self, snapshot: &std::path::Path) {
        for i in 0..self.members.len() {
            self.signal(i, nix::sys::signal::Signal::SIGCONT);
            self.kill(i);
        }
        let initial: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(j, p)| format!("m{j}=http://127.0.0.1:{p}"))
            .collect();
        for i in 0..self.members.len() {
            let data = self.dir.path().join(format!("m{i}"));
            let _ = std::fs::remove_dir_all(&data);
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore", &snapshot.display().to_string()])
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(&data)
                .args(["--initial-cluster", &initial.join(",")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{}", self.peers[i]),
                ])
                .output()
                .expect("etcdctl snapshot restore");
            assert!(
                out.status.success(),
                "snapshot restore: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        // Answering, not healthy: a snapshot taken under an alarm (NOSPACE) restores it, and
        // etcd's /health says false while an alarm is raised.
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..self.members.len() {
            while !answering(self.clients[i]) {
                assert!(
                    Instant::now() < deadline,
                    "etcd member {i} did not answer after the restore"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Test certificates made with the openssl tool: a CA, a server certificate for 127.0.0.1 and
/// a client certificate, all valid for a day.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=fernetd-test-ca",
            ],
        );
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        let certs = Certs { dir };
        certs.issue("server", "server.ext");
        certs.issue("client", "client.ext");
        certs
    }

    /// A client certificate whose common name is `cn` (`{cn}.crt`, `{cn}.key`): with
    /// authentication on, etcd takes the name as the user's.
    pub fn client(&self, cn: &str) {
        self.issue(cn, "client.ext");
    }

    fn issue(&self, who: &str, ext: &str) {
        let d = self.dir.path();
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.crt"),
                "-days",
                "1",
                "-extfile",
                ext,
            ],
        );
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs the openssl tool in `dir`; panics with its output when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
