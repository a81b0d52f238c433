//! Examples and integration tests for retry-kafka, and what they share: a real
//! Kafka-protocol broker process for tests and benchmarks.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
