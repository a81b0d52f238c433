//! Examples and integration tests for retry-kafka, and what they share: real broker and server
//! processes (tansu for Kafka, redis-server) for tests and benchmarks.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// CPU time this process has used so far, all threads (`CLOCK_PROCESS_CPUTIME_ID`): what the
/// benchmarks divide by messages, steadier than wall time on a shared machine.
pub fn process_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; the clock exists on every Linux.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_test_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A tansu broker process (Apache Kafka protocol, memory storage) on a free loopback port.
pub struct Tansu {
    child: Child,
    pub bootstrap: String,
    log: PathBuf,
}

impl Tansu {
    /// The binary: `$TANSU_BIN`, or `.tools/bin/tansu` as `scripts/test.sh` installs it.
    pub fn binary() -> PathBuf {
        let path = std::env::var_os("TANSU_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/tansu"));
        assert!(
            path.is_file(),
            "the tansu broker is not installed at {}: run ./scripts/test.sh (or ./scripts/install-test-deps.sh) \
             to install it, or set TANSU_BIN",
            path.display()
        );
        path
    }

    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::env::temp_dir().join(format!("retry-kafka-tansu-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("broker log file");
        let child = Command::new(Self::binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start tansu");
        let mut broker = Tansu {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!(
                    "tansu exited with {status}; log: {}",
                    std::fs::read_to_string(&broker.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        // Only the process this test started, by its own handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("RK_KEEP_BROKER_LOG").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A `redis-server` process on a free loopback port, with its data in a directory of its own.
/// Stopped (SIGKILL, by its own handle) on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    append_only: bool,
    /// Serves TLS only, with a self-signed certificate for 127.0.0.1.
    tls: bool,
    dir: PathBuf,
}

impl RedisServer {
    /// The binary: `$REDIS_SERVER_BIN`, or `redis-server` as `scripts/install-test-deps.sh`
    /// installs it (Debian's package).
    pub fn binary() -> PathBuf {
        if let Some(path) = std::env::var_os("REDIS_SERVER_BIN") {
            return PathBuf::from(path);
        }
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("redis-server"))
                .find(|candidate| candidate.is_file())
        });
        found.unwrap_or_else(|| {
            panic!(
                "redis-server is not installed: run ./scripts/test.sh (or ./scripts/install-test-deps.sh) \
                 to install it, or set REDIS_SERVER_BIN"
            )
        })
    }

    /// A server without persistence or password.
    pub fn start() -> Self {
        Self::start_with(None, false)
    }

    /// A server that requires `password` (when given) and, with `append_only`, logs every write
    /// to an append-only file (fsync every write) so a restart keeps what was acknowledged.
    pub fn start_with(password: Option<&str>, append_only: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("retry-kafka-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis data directory");
        let mut server = RedisServer {
            child: None,
            port,
            password: password.map(str::to_owned),
            append_only,
            tls: false,
            dir,
        };
        server.launch();
        server
    }

    /// A server that speaks TLS only (`rediss://`), with a certificate for 127.0.0.1 signed by
    /// a CA made for it with `openssl`: [`RedisServer::ca_file`] is the root to trust.
    pub fn start_tls() -> Self {
        let mut server = Self::start_with(None, false);
        if let Some(mut child) = server.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A CA, and a server certificate for 127.0.0.1 that it signs (rustls refuses a
        // self-signed certificate used as both).
        let dir = server.dir.clone();
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is not installed: run ./scripts/install-test-deps.sh");
            assert!(status.success(), "openssl {args:?} failed");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=retry-kafka test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ]);
        server.tls = true;
        server.launch();
        server
    }

    /// The certificate of the CA that signed a TLS server's certificate, PEM.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `redis://[:password@]127.0.0.1:port`.
    pub fn url(&self) -> String {
        if self.tls {
            return format!("rediss://127.0.0.1:{}", self.port);
        }
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The URL without the password.
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server the way an operator does (SIGTERM: it writes its append-only file and
    /// exits), then starts it again on the same port and data directory.
    pub fn restart(&mut self, down_for: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        std::thread::sleep(down_for);
        self.launch();
    }

    fn launch(&mut self) {
        let log = self.dir.join("server.log");
        let mut command = Command::new(Self::binary());
        if self.tls {
            let (cert, key) = (self.dir.join("cert.pem"), self.dir.join("key.pem"));
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(&key)
                .arg("--tls-ca-cert-file")
                .arg(self.ca_file())
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().expect("utf-8 temp dir")])
            .args([
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                log.to_str().unwrap(),
            ]);
        if self.append_only {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!(
                    "redis-server exited with {status}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
