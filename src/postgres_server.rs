//! A PostgreSQL server for tests: a cluster made with `initdb` in a temp directory, `postgres`
//! on a free loopback port (and a Unix socket in the same directory), stopped on drop; with
//! TLS (`ssl = on`) and client certificates when asked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_ports, spawn_dying_with_this_process};

/// The user that owns the cluster's files when the tests run as root (initdb and postgres
/// refuse to run as root); Debian's package creates it.
const SYSTEM_USER: &str = "postgres";

/// The user and group ids of [`SYSTEM_USER`].
fn system_user() -> (u32, u32) {
    let name = std::ffi::CString::new(SYSTEM_USER).expect("no NUL");
    // SAFETY: a NUL-terminated name; the entry is read at once, before any other getpw* call
    // of this thread.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "the user {SYSTEM_USER} does not exist: run ./scripts/install-test-deps.sh (Debian's \
         postgresql package creates it)"
    );
    // SAFETY: not null, checked above.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

/// A `postgres` server on a free loopback port with a cluster of its own (superuser
/// `postgres`, trust authentication), stopped on drop.
pub struct PostgresServer {
    child: Option<Child>,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl PostgresServer {
    /// The directory of `initdb` and `postgres`: `$POSTGRES_BIN_DIR`, or the newest
    /// `/usr/lib/postgresql/<version>/bin` (Debian's package, as
    /// `scripts/install-test-deps.sh` installs it).
    pub fn bin_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("POSTGRES_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .max();
        match newest {
            Some((_, bin)) => bin,
            None => panic!(
                "PostgreSQL is not installed: run ./scripts/test.sh (or ./scripts/install-test-deps.sh, \
                 which runs apt-get install postgresql), or set POSTGRES_BIN_DIR to the directory of \
                 initdb and postgres"
            ),
        }
    }

    /// A new cluster, started and accepting connections.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A new cluster with `ssl = on`, its certificate and key `cert.pem` and `key.pem` of
    /// `tls.certificates` (as [`make_certificates_for`](crate::make_certificates_for) writes
    /// them). With `tls.client_certificates`, TLS connections from 127.0.0.1 must present a
    /// client certificate signed by `ca.pem` there, for the user connecting (pg_hba.conf's
    /// `hostssl … cert`); plain connections are still trusted, for the test's own SQL.
    pub fn start_tls(tls: ServerTls<'_>) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls<'_>>) -> Self {
        let [port] = free_ports();
        let dir = std::env::temp_dir().join(format!("retry-kafka-pg-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("postgres temp directory");
        let mut server = PostgresServer {
            child: None,
            port,
            dir,
        };
        server.init();
        if let Some(tls) = tls {
            server.configure_tls(tls);
        }
        // A port taken by another test's server between `free_ports` and the bind: postgres
        // exits at once, and is started again on another.
        for _ in 0..5 {
            match server.try_launch() {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => [server.port] = free_ports(),
                Err(log) => panic!("postgres exited before it accepted connections; log: {log}"),
            }
        }
        panic!("five postgres servers in a row found their port taken by another process");
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_as("postgres")
    }

    /// The server's process id (the postmaster's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// The URL for `user` (trust authentication: no password).
    pub fn url_as(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A command that runs `program` as the cluster's owner: as is for a normal user, as
    /// [`SYSTEM_USER`] for root. The child changes its user itself (std's `uid`/`gid`, before
    /// [`spawn_dying_with_this_process`] arms its parent-death signal, which a change of user
    /// would clear; `setpriv` in between cleared it).
    fn command(program: &Path) -> Command {
        let mut command = Command::new(program);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::process::CommandExt;
            let (uid, gid) = system_user();
            command.uid(uid).gid(gid);
        }
        command
    }

    fn init(&self) {
        if unsafe { libc::geteuid() } == 0 {
            let owned = Command::new("chown")
                .args([SYSTEM_USER, self.dir.to_str().expect("utf-8 temp dir")])
                .status()
                .expect("chown");
            assert!(owned.success(), "chown {SYSTEM_USER} {}", self.dir.display());
        }
        let mut initdb = Self::command(&Self::bin_dir().join("initdb"));
        initdb
            .arg("-D")
            .arg(self.data())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale",
                "C",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = spawn_dying_with_this_process(initdb)
            .and_then(|initdb| initdb.wait_with_output())
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Copies the certificates into the cluster, owned by the cluster's owner (the server
    /// refuses a key others may read), and turns TLS on.
    fn configure_tls(&self, tls: ServerTls<'_>) {
        let data = self.data();
        for (from, to) in [
            ("cert.pem", "server.crt"),
            ("key.pem", "server.key"),
            ("ca.pem", "root.crt"),
        ] {
            std::fs::copy(tls.certificates.join(from), data.join(to)).expect("copy a certificate");
        }
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod 600 server.key");
        if unsafe { libc::geteuid() } == 0 {
            let owned = Command::new("chown")
                .arg(SYSTEM_USER)
                .args(["server.crt", "server.key", "root.crt"].map(|file| data.join(file)))
                .status()
                .expect("chown");
            assert!(owned.success(), "chown {SYSTEM_USER} the certificates");
        }
        let mut conf = "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n".to_owned();
        if tls.client_certificates {
            conf.push_str("ssl_ca_file = 'root.crt'\n");
            let hba = std::fs::read_to_string(data.join("pg_hba.conf")).expect("read pg_hba.conf");
            // The first line that matches decides: TLS connections need a certificate.
            std::fs::write(
                data.join("pg_hba.conf"),
                format!("hostssl all all 127.0.0.1/32 cert\n{hba}"),
            )
            .expect("write pg_hba.conf");
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut file, conf.as_bytes()).expect("write postgresql.conf");
    }

    /// Starts the server and waits until it accepts connections; `Err(its log)` when it exits
    /// first.
    fn try_launch(&mut self) -> Result<(), String> {
        let log = self.dir.join("server.log");
        let mut postgres = Self::command(&Self::bin_dir().join("postgres"));
        postgres
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A test cluster: nothing needs to survive a crash of the machine.
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("postgres log"));
        let child = spawn_dying_with_this_process(postgres).expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("ready to accept connections") {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                return Err(format!("{status}; {text}"));
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections on {} within 30 s; log: {text}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// TLS for [`PostgresServer::start_tls`].
#[derive(Clone, Copy)]
pub struct ServerTls<'a> {
    /// The directory of `ca.pem`, `cert.pem` and `key.pem`.
    pub certificates: &'a Path,
    /// Whether TLS connections must present a client certificate signed by `ca.pem`.
    pub client_certificates: bool,
}

impl Drop for PostgresServer {
    /// A fast shutdown (SIGINT: sessions are ended, shared memory freed), SIGKILL after 10 s.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no preconditions; the pid is our child's, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
