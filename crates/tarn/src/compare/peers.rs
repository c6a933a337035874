//! The servers of a comparison: tarn (this executable's `serve`, as a child
//! process like every peer) and Debian's redis-server, etcd, nats-server
//! and PostgreSQL. Each runs on a free loopback port in its own temp dir
//! and is stopped (and the dir removed) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A system under comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    Tarn,
    Redis,
    Etcd,
    Nats,
    Postgres,
}

impl System {
    pub const ALL: [System; 5] = [
        System::Tarn,
        System::Redis,
        System::Etcd,
        System::Nats,
        System::Postgres,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::Tarn => "tarn",
            System::Redis => "redis",
            System::Etcd => "etcd",
            System::Nats => "nats",
            System::Postgres => "postgres",
        }
    }

    /// Where the peer's program is, or why it is missing.
    pub fn locate(self) -> Result<PathBuf> {
        let found = match self {
            System::Tarn => Some(std::env::current_exe()?),
            System::Redis => which("redis-server"),
            System::Etcd => which("etcd"),
            System::Nats => which("nats-server"),
            System::Postgres => postgres_bin().map(|dir| dir.join("postgres")),
        };
        found.with_context(|| {
            format!(
                "{} is not installed: run scripts/bench-deps.sh (apt-get install {})",
                self.name(),
                self.package()
            )
        })
    }

    fn package(self) -> &'static str {
        match self {
            System::Tarn => "(built from this repository)",
            System::Redis => "redis-server",
            System::Etcd => "etcd-server",
            System::Nats => "nats-server",
            System::Postgres => "postgresql",
        }
    }

    /// The peer's version line, for the report.
    pub fn version(self) -> String {
        if self == System::Tarn {
            return format!("tarn {}", env!("CARGO_PKG_VERSION"));
        }
        let line = self.locate().map_or(String::new(), |p| {
            super::report::first_line(&p.to_string_lossy(), &["--version"])
        });
        if line.is_empty() {
            "not installed".into()
        } else {
            line
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The newest installed PostgreSQL's `bin` directory (Debian keeps the
/// server programs out of `PATH`, in `/usr/lib/postgresql/<major>/bin`).
fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How to (re)start one server process.
#[derive(Clone, Debug)]
struct Spec {
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// Run as this user (PostgreSQL refuses to run as root).
    user: Option<(u32, u32)>,
}

impl Spec {
    fn spawn(&self, log: &Path) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.spawn()
            .with_context(|| format!("starting {}", self.program.display()))
    }
}

/// One running server: its port, data dir and process.
pub struct Server {
    pub system: System,
    pub port: u16,
    pub dir: PathBuf,
    spec: Spec,
    child: Option<Child>,
}

/// Settings a workload asks of a server.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// tarn: `wal.sync` (`always`, `batch(2)`, ...).
    pub tarn_sync: Option<&'static str>,
    /// redis: append-only file synced every second (else no persistence).
    pub redis_aof: bool,
    /// redis: publish keyspace notifications for string commands.
    pub redis_notify: bool,
    /// tarn: run the server under `perf record`, writing this file.
    pub perf_to: Option<PathBuf>,
}

static NEXT_DIR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Server {
    /// Starts `system` on a free port in a new temp dir and waits until it
    /// accepts connections.
    pub fn start(system: System, settings: &Settings) -> Result<Server> {
        let program = system.locate()?;
        let n = NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "tarn-compare-{}-{}-{n}",
            system.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = free_port()?;
        let d = dir.to_string_lossy().to_string();
        // The dir goes with the server; until there is one, an error
        // removes it here.
        let spec = (|| -> Result<Spec> {
            Ok(match system {
                System::Tarn => {
                    let mut args = vec![
                        "serve".into(),
                        "--data".into(),
                        format!("{d}/data"),
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                    ];
                    let mut program = program;
                    if let Some(out) = &settings.perf_to {
                        let mut wrapped: Vec<String> = [
                            "record",
                            "-e",
                            "cpu-clock",
                            "-F",
                            "499",
                            // Release builds have no frame pointers: unwind
                            // with DWARF, or Rust frames go missing.
                            "--call-graph",
                            "dwarf,16384",
                            "-o",
                            &out.to_string_lossy(),
                            "--",
                            &program.to_string_lossy(),
                        ]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                        wrapped.append(&mut args);
                        args = wrapped;
                        program = which("perf").context(
                            "--perf needs perf: apt-get install linux-perf (Debian's package)",
                        )?;
                    }
                    Spec {
                        program,
                        args,
                        envs: vec![
                            (
                                "TARN_WAL_SYNC".into(),
                                settings.tarn_sync.unwrap_or("batch(2)").into(),
                            ),
                            ("TARN_LIMITS_MAX_CONNECTIONS".into(), "30000".into()),
                            (
                                "TARN_LIMITS_MAX_REQUESTS_PER_SEC".into(),
                                u32::MAX.to_string(),
                            ),
                            ("RUST_LOG".into(), "warn".into()),
                        ],
                        user: None,
                    }
                }
                System::Redis => {
                    let mut args: Vec<String> = vec![
                        "--port".into(),
                        port.to_string(),
                        "--bind".into(),
                        "127.0.0.1".into(),
                        "--save".into(),
                        "".into(),
                        "--dir".into(),
                        d.clone(),
                        "--maxclients".into(),
                        "30000".into(),
                        "--appendonly".into(),
                        if settings.redis_aof { "yes" } else { "no" }.into(),
                        "--appendfsync".into(),
                        "everysec".into(),
                    ];
                    if settings.redis_notify {
                        args.extend(["--notify-keyspace-events".into(), "K$".into()]);
                    }
                    Spec {
                        program,
                        args,
                        envs: vec![],
                        user: None,
                    }
                }
                System::Etcd => {
                    let peer = free_port()?;
                    Spec {
                        program,
                        args: vec![
                            "--name".into(),
                            "bench".into(),
                            "--data-dir".into(),
                            format!("{d}/data"),
                            "--listen-client-urls".into(),
                            format!("http://127.0.0.1:{port}"),
                            "--advertise-client-urls".into(),
                            format!("http://127.0.0.1:{port}"),
                            "--listen-peer-urls".into(),
                            format!("http://127.0.0.1:{peer}"),
                            "--initial-advertise-peer-urls".into(),
                            format!("http://127.0.0.1:{peer}"),
                            "--initial-cluster".into(),
                            format!("bench=http://127.0.0.1:{peer}"),
                            "--log-level".into(),
                            "warn".into(),
                        ],
                        envs: vec![(
                            "ETCD_UNSUPPORTED_ARCH".into(),
                            std::env::consts::ARCH.into(),
                        )],
                        user: None,
                    }
                }
                System::Nats => Spec {
                    program,
                    args: vec![
                        "-a".into(),
                        "127.0.0.1".into(),
                        "-p".into(),
                        port.to_string(),
                    ],
                    envs: vec![],
                    user: None,
                },
                System::Postgres => postgres_spec(&program, &dir, port)?,
            })
        })();
        let spec = match spec {
            Ok(spec) => spec,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut server = Server {
            system,
            port,
            dir,
            spec,
            child: None,
        };
        server.launch()?;
        server.wait_listening(Duration::from_secs(60))?;
        if system == System::Postgres {
            server.wait_postgres_ready(Duration::from_secs(60))?;
        }
        Ok(server)
    }

    /// Starts the process (again, on the same dir and port).
    pub fn launch(&mut self) -> Result<()> {
        self.child = Some(self.spec.spawn(&self.dir.join("server.log"))?);
        Ok(())
    }

    /// Waits until the port accepts connections, failing early (with the
    /// server's log) if the process exits.
    pub fn wait_listening(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on port {} within {within:?}; its log:\n{}",
                    self.system.name(),
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// PostgreSQL listens before it accepts sessions ("the database system
    /// is starting up"): waits until `pg_isready` says it does.
    fn wait_postgres_ready(&mut self, within: Duration) -> Result<()> {
        let pg_isready = self.spec.program.with_file_name("pg_isready");
        let deadline = Instant::now() + within;
        loop {
            let ready = Command::new(&pg_isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .with_context(|| format!("running {}", pg_isready.display()))?;
            if ready.success() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("PostgreSQL did not accept sessions within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Fails with the server's log if its process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.system.name(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills the process with SIGKILL (a crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process gracefully (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// CPU seconds (user + system) the server has used so far: its
    /// process, its children that exited, and its live children
    /// (PostgreSQL serves each connection in a child process).
    pub fn cpu_secs(&self) -> f64 {
        let Some(child) = &self.child else {
            return 0.0;
        };
        let pid = child.id().to_string();
        let mut total = cpu_secs(&format!("/proc/{pid}/stat"));
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = entry.path().join("stat");
            let Ok(text) = std::fs::read_to_string(&stat) else {
                continue;
            };
            let ppid = text
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid == Some(pid.as_str()) {
                total += cpu_secs(&stat.to_string_lossy());
            }
        }
        total
    }

    /// Bytes the server's data take on disk.
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(meta) = std::fs::symlink_metadata(p) else {
                return 0;
            };
            if meta.is_dir() {
                std::fs::read_dir(p)
                    .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                    .unwrap_or(0)
            } else {
                meta.len()
            }
        }
        walk(&self.dir)
    }
}

/// CPU seconds (user + system, its own and its waited-for children's) of
/// the process whose `/proc/<pid>/stat` is at `stat` (0 if unreadable).
pub fn cpu_secs(stat: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in `(...)`;
    // utime, stime, cutime and cstime (children waited for) are the
    // 14th to 17th fields, in clock ticks.
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12, 13, 14]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks / per_sec
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `initdb` a cluster in `dir/data` (as the `postgres` user when run as
/// root, which PostgreSQL refuses to be), and the `postgres` command for
/// it: trust authentication on 127.0.0.1, `fsync` and
/// `synchronous_commit` on (the defaults, spelled out).
fn postgres_spec(program: &Path, dir: &Path, port: u16) -> Result<Spec> {
    let user = if nix::unistd::geteuid().is_root() {
        let pg = nix::unistd::User::from_name("postgres")?
            .context("running as root, PostgreSQL needs the `postgres` user (apt-get install postgresql creates it)")?;
        std::os::unix::fs::chown(dir, Some(pg.uid.as_raw()), Some(pg.gid.as_raw()))?;
        Some((pg.uid.as_raw(), pg.gid.as_raw()))
    } else {
        None
    };
    let bin = program.parent().context("postgres has no directory")?;
    let data = dir.join("data");
    let initdb = Spec {
        program: bin.join("initdb"),
        args: vec![
            "-D".into(),
            data.to_string_lossy().into(),
            "-U".into(),
            "postgres".into(),
            "-A".into(),
            "trust".into(),
            "-E".into(),
            "UTF8".into(),
            "--no-sync".into(),
        ],
        envs: vec![],
        user,
    };
    let status = initdb.spawn(&dir.join("initdb.log"))?.wait()?;
    if !status.success() {
        bail!(
            "initdb failed ({status}): {}",
            std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default()
        );
    }
    Ok(Spec {
        program: program.to_path_buf(),
        args: vec![
            "-D".into(),
            data.to_string_lossy().into(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            dir.to_string_lossy().into(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "max_connections=200".into(),
            "-c".into(),
            "fsync=on".into(),
            "-c".into(),
            "synchronous_commit=on".into(),
        ],
        envs: vec![],
        user,
    })
}
