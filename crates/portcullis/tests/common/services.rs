//! Real servers for tests: each starts on a free loopback port with a throwaway data folder and
//! is stopped when dropped, whatever the test's outcome. The binaries come from Debian's
//! packages, which `scripts/test.sh` installs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::ports::free_port;

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::var_os("PORTCULLIS_TEST_WORK")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("random");
        let name = format!(
            "{tag}-{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let path = base.join(name);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

fn which(bin: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = format!("{dir}/{bin}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{bin} is not installed: run `bash scripts/test.sh`, which installs it");
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut r = RedisServer {
            port,
            child: None,
            dir: TempDir::new("redis"),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        let child = Command::new(which("redis-server"))
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(which("redis-cli"))
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throwaway PostgreSQL cluster: `initdb` into a temporary folder, `pg_ctl` on a free
/// loopback port (socket in the same folder), trust authentication for `postgres`. Debian's
/// binaries under `/usr/lib/postgresql/VERSION/bin`; when the tests run as root, the server
/// runs as the `postgres` user (PostgreSQL refuses root), its folder chowned to it.
pub struct PostgresServer {
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
    dir: TempDir,
    running: bool,
    tls: bool,
}

/// The newest `/usr/lib/postgresql/*/bin` holding `initdb`.
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed: run `bash scripts/test.sh`, which installs it")
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PostgresServer {
    pub fn start() -> PostgresServer {
        Self::start_with(None)
    }

    /// A cluster that accepts TCP connections over TLS only (`ssl = on` with this certificate
    /// and key, and `hostnossl … reject` first in `pg_hba.conf`).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> PostgresServer {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> PostgresServer {
        let bin = postgres_bin();
        let as_postgres = running_as_root();
        let dir = TempDir::new("postgres");
        let data = dir.0.join("data");
        std::fs::create_dir_all(&data).expect("create data dir");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir.0)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the cluster folder to postgres");
        }
        let s = PostgresServer {
            port: free_port(),
            bin,
            as_postgres,
            dir,
            running: false,
            tls: tls.is_some(),
        };
        let out = s
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((cert, key)) = tls {
            let hba = data.join("pg_hba.conf");
            let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            let files = [
                (s.dir.0.join("server.crt"), cert),
                (s.dir.0.join("server.key"), key),
                (hba, &*format!("hostnossl all all all reject\n{rules}")),
            ];
            for (path, text) in &files {
                std::fs::write(path, text).expect("write a TLS file");
                let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
                std::fs::set_permissions(path, mode).expect("chmod 600");
                if s.as_postgres {
                    let ok = Command::new("chown")
                        .args(["postgres:postgres"])
                        .arg(path)
                        .status()
                        .is_ok_and(|st| st.success());
                    assert!(ok, "chown {}", path.display());
                }
            }
        }
        let mut s = s;
        s.restart();
        s
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// A URL for `tokio-postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts (again) on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        let data = self.dir.0.join("data");
        let mut opts = format!(
            "-p {} -h 127.0.0.1 -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.0.display()
        );
        if self.tls {
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                self.dir.0.display()
            ));
        }
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(self.dir.0.join("server.log"))
            .args(["-w", "-t", "30", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl runs");
        let log = std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "postgres did not start: {}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = true;
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no shutdown checkpoint, clients
    /// cut off, as in a crash).
    pub fn stop_immediate(&mut self) {
        if !self.running {
            return;
        }
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.0.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    /// Runs `psql -At -c SQL` and returns its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-At", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}
