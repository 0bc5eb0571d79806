//! Rate-limit decisions: latency per decision (criterion) for memory (one key, one million
//! keys), SQLite and Redis on loopback; then throughput with 32 concurrent callers, the Redis
//! figure as a ratio to `redis-benchmark` running the same script with `EVALSHA` in the same
//! run.
//!
//! ```text
//! cargo bench -p portcullis --bench rate_limit -- --warm-up-time 1 --measurement-time 3
//! ```
//! Needs `redis-server` and `redis-benchmark` (Debian's redis-server / redis-tools), as
//! `scripts/test.sh` installs.

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use portcullis::policy::Algorithm;
use portcullis::rate_limit::algorithm::Rule;
use portcullis::rate_limit::memory::MemoryStore;
use portcullis::rate_limit::redis::{RedisStore, SCRIPT};
use portcullis::rate_limit::sqlite::SqliteStore;
use portcullis::rate_limit::{Charge, RateLimitStore};

const HUGE: u32 = u32::MAX;

fn rule() -> Rule {
    Rule::new(HUGE, 3_600_000_000, Algorithm::SlidingWindow, 0)
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Redis(child, port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

async fn decide(store: &dyn RateLimitStore, key: &str) -> bool {
    store
        .decide(&[Charge {
            key,
            rule: rule(),
            cost: 1,
        }])
        .await
        .map(|v| v[0].allowed)
        .unwrap_or(false)
}

/// Decisions per second with `callers` concurrent tasks, each deciding `per` times.
fn throughput(
    rt: &tokio::runtime::Runtime,
    store: Arc<dyn RateLimitStore>,
    callers: usize,
    per: usize,
) -> f64 {
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = format!("bench|ip:10.0.0.{c}");
                    for _ in 0..per {
                        black_box(decide(&*store, &key).await);
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    (callers * per) as f64 / start.elapsed().as_secs_f64()
}

fn redis_benchmark_evalsha(port: u16, callers: usize, n: usize) -> Option<f64> {
    let load = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "SCRIPT", "LOAD", SCRIPT])
        .output()
        .ok()?;
    let sha = String::from_utf8_lossy(&load.stdout).trim().to_string();
    let r = rule();
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            &callers.to_string(),
            "-n",
            &n.to_string(),
            "-q",
            "-r",
            "256",
        ])
        .args(["EVALSHA", &sha, "1", "bench:rand:__rand_int__", "1"])
        .args([
            r.limit.to_string(),
            r.window_us.to_string(),
            "0".to_string(),
            "1".to_string(),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "EVALSHA … bench:rand:__rand_int__ …: 81234.57 requests per second, p50=0.303 msec"
    let tail = text.rsplit('\r').next().unwrap_or(&text);
    let end = tail.find(" requests per second")?;
    tail[..end].rsplit(' ').next()?.parse::<f64>().ok()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    let memory = Arc::new(MemoryStore::new(2_000_000));
    // Fill one million keys first, for the large-table figure.
    for i in 0..1_000_000u32 {
        let key = format!("fill|ip:{i}");
        let _ = memory.decide_now(&[Charge {
            key: &key,
            rule: rule(),
            cost: 1,
        }]);
    }
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let sqlite: Arc<dyn RateLimitStore> =
        Arc::new(SqliteStore::open(dir.join("rl.db")).expect("sqlite opens"));
    let redis_server = start_redis();
    let redis: Option<Arc<dyn RateLimitStore>> = redis_server.as_ref().and_then(|r| {
        rt.block_on(RedisStore::connect(
            &format!("redis://127.0.0.1:{}", r.1),
            None,
            "bench:",
        ))
        .ok()
        .map(|s| Arc::new(s) as Arc<dyn RateLimitStore>)
    });

    {
        let mut g = c.benchmark_group("rate_limit_decision");
        let m = memory.clone();
        g.bench_function("memory_single_key", |b| {
            b.iter(|| {
                black_box(m.decide_now(&[Charge {
                    key: "one|ip:1.2.3.4",
                    rule: rule(),
                    cost: 1,
                }]))
            })
        });
        let m = memory.clone();
        let mut i = 0u32;
        g.bench_function("memory_1m_keys", |b| {
            b.iter(|| {
                i = (i + 7919) % 1_000_000;
                let key = format!("fill|ip:{i}");
                black_box(m.decide_now(&[Charge {
                    key: &key,
                    rule: rule(),
                    cost: 1,
                }]))
            })
        });
        let s = sqlite.clone();
        g.bench_function("sqlite", |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(decide(&*s, "one|ip:1.2.3.4").await) })
        });
        if let Some(r) = redis.clone() {
            g.bench_function("redis_loopback", |b| {
                b.to_async(&rt)
                    .iter(|| async { black_box(decide(&*r, "one|ip:1.2.3.4").await) })
            });
        } else {
            eprintln!(
                "redis-server not found: the Redis figures are skipped (run scripts/test.sh first)"
            );
        }
        g.finish();
    }

    println!("\nthroughput, 32 concurrent callers:");
    println!(
        "  memory : {:>10.0} decisions/s",
        throughput(&rt, memory.clone(), 32, 20_000)
    );
    println!(
        "  sqlite : {:>10.0} decisions/s",
        throughput(&rt, sqlite.clone(), 32, 500)
    );
    if let (Some(r), Some(server)) = (redis, redis_server.as_ref()) {
        let ours = throughput(&rt, r, 32, 2_000);
        println!("  redis  : {ours:>10.0} decisions/s");
        match redis_benchmark_evalsha(server.1, 32, 64_000) {
            Some(base) => println!(
                "  redis-benchmark EVALSHA (same script, -c 32): {base:.0} req/s; ratio {:.2}",
                ours / base
            ),
            None => println!("  redis-benchmark not available: no ratio"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    c.final_summary();
}
