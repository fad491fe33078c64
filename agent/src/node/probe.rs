//! Health probes: the pure bookkeeping (thresholds turn single results into a state) and
//! the three checks — exec inside the container (through `orch-agent __exec`), HTTP GET
//! to the container's address (hyper), TCP connect — each bounded by its timeout.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use orch_api::pb;
use tokio::sync::mpsc;

use super::backends::ProbeChecks;
use crate::runtime::exec::ExecRequest;

/// A probe's verdict from consecutive results, as Kubernetes counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeTracker {
    successes: u32,
    failures: u32,
    /// `None` until a threshold is first reached.
    healthy: Option<bool>,
}

impl ProbeTracker {
    /// Records one result; returns the new verdict when it changed.
    pub fn observe(&mut self, ok: bool, success_threshold: u32, failure_threshold: u32) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= success_threshold.max(1) {
            Some(true)
        } else if self.failures >= failure_threshold.max(1) {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.healthy != Some(v) => {
                self.healthy = Some(v);
                Some(v)
            }
            _ => None,
        }
    }

    pub fn healthy(&self) -> Option<bool> {
        self.healthy
    }
}

/// Where a probe runs: the container's address and what entering it takes.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub ip: Option<Ipv4Addr>,
    /// The agent binary (`__exec` helper) and the container's init and cgroups.
    pub helper: PathBuf,
    pub exec: ExecRequest,
}

/// Runs the probe once: `Ok` on success, `Err(why)` otherwise.
pub async fn check(probe: &pb::Probe, target: &ProbeTarget) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    let attempt = async {
        match &probe.handler {
            Some(pb::probe::Handler::Exec(exec)) => check_exec(&exec.command, target).await,
            Some(pb::probe::Handler::HttpGet(http)) => check_http(http, target).await,
            Some(pb::probe::Handler::TcpSocket(tcp)) => check_tcp(tcp.port, target).await,
            None => Err("the probe has no handler".to_owned()),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

fn address(target: &ProbeTarget, port: u32) -> Result<SocketAddr, String> {
    let ip = target.ip.ok_or("the replica has no address")?;
    let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
    Ok(SocketAddr::from((ip, port)))
}

async fn check_tcp(port: u32, target: &ProbeTarget) -> Result<(), String> {
    let address = address(target, port)?;
    tokio::net::TcpStream::connect(address).await.map(|_| ()).map_err(|e| format!("tcp connect {address}: {e}"))
}

async fn check_http(http: &pb::HttpGetAction, target: &ProbeTarget) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper::body::Bytes;

    let address = address(target, http.port)?;
    let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("http GET {address}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| format!("http GET {address}: {e}"))?;
    /// Aborts the connection task however this function ends (a timeout drops it).
    struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _driver = AbortOnDrop(tokio::spawn(connection));
    let path = if http.path.is_empty() { "/" } else { http.path.as_str() };
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, address.to_string()).header("user-agent", "orch-probe/1");
    for header in &http.http_headers {
        request = request.header(header.name.as_str(), header.value.as_str());
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|e| format!("http GET {address}{path}: {e}"))?;
    let result = sender.send_request(request).await;
    let response = result.map_err(|e| format!("http GET {address}{path}: {e}"))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("http GET {address}{path}: status {}", status.as_u16()))
    }
}

/// How much of an exec probe's error output is kept for its failure's reason; the rest
/// is read and dropped (so the command never blocks writing it).
pub const PROBE_OUTPUT_BYTES: u64 = 1024;

async fn check_exec(command: &[String], target: &ProbeTarget) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut request = target.exec.clone();
    request.command = command.to_vec();
    let mut child = request
        .helper_command(&target.helper)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("exec {command:?}: cannot start the helper: {e}"))?;
    let mut kept = Vec::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = (&mut stderr).take(PROBE_OUTPUT_BYTES).read_to_end(&mut kept).await;
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
    }
    let status = child.wait().await.map_err(|e| format!("exec {command:?}: waiting for the helper: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&kept);
        let code = status.code().map_or_else(|| "a signal".to_owned(), |c| format!("exit code {c}"));
        Err(format!("exec {command:?}: {code}{}", if stderr.trim().is_empty() { String::new() } else { format!(" ({})", stderr.trim()) }))
    }
}

/// What the probes of a running container report to its supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The startup probe succeeded.
    Started,
    /// The readiness verdict changed, with the last failure.
    Ready(bool, String),
    /// A startup or liveness probe failed for good.
    Unhealthy(String),
}

/// Where each probe attempt's outcome goes (the agent's metrics): the probe's kind
/// (`startup`, `liveness`, `readiness`) and whether it succeeded.
pub type ProbeRecord = Arc<dyn Fn(&'static str, bool) + Send + Sync>;

/// The startup probe first (when there is one), then liveness and readiness side by side.
/// Each attempt is one `checks.check`, recorded.
pub async fn run_probes(probes: pb::Probes, target: ProbeTarget, checks: Arc<dyn ProbeChecks>, events: mpsc::Sender<ProbeEvent>, record: ProbeRecord) {
    let checks = checks.as_ref();
    let record = record.as_ref();
    if let Some(startup) = &probes.startup {
        match probe_until_verdict(startup, &target, checks, true, &|ok| record("startup", ok)).await {
            Ok(()) => {
                let _ = events.send(ProbeEvent::Started).await;
            }
            Err(why) => {
                let _ = events.send(ProbeEvent::Unhealthy(format!("startup probe failed: {why}"))).await;
                return;
            }
        }
    }
    let liveness = async {
        if let Some(liveness) = &probes.liveness {
            if let Err(why) = probe_until_verdict(liveness, &target, checks, false, &|ok| record("liveness", ok)).await {
                let _ = events.send(ProbeEvent::Unhealthy(format!("liveness probe failed: {why}"))).await;
            }
        }
    };
    let readiness = async {
        let Some(readiness) = &probes.readiness else { return };
        tokio::time::sleep(Duration::from_secs(u64::from(readiness.initial_delay_seconds))).await;
        let mut tracker = ProbeTracker::default();
        let period = Duration::from_secs(u64::from(readiness.period_seconds.max(1)));
        let mut ready_once = false;
        let mut failed = 0u32;
        loop {
            let attempt = tokio::time::Instant::now();
            let result = checks.check(readiness, &target).await;
            record("readiness", result.is_ok());
            failed = if result.is_ok() { 0 } else { failed.saturating_add(1) };
            let why = result.as_ref().err().cloned().unwrap_or_default();
            if let Some(verdict) = tracker.observe(result.is_ok(), readiness.success_threshold, readiness.failure_threshold) {
                ready_once |= verdict;
                if events.send(ProbeEvent::Ready(verdict, why)).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep_until(attempt + readiness_pause(ready_once, failed, period)).await;
        }
    };
    tokio::join!(liveness, readiness);
}

/// How often readiness is checked until a replica is first ready, at most: a new
/// replica's first check usually comes before its server listens, and waiting a whole
/// period after it made every start a period slower than it was.
pub const FIRST_READINESS_RETRY: Duration = Duration::from_millis(100);

/// The first pause after a failed check of a replica never ready yet; each next one
/// doubles, up to [`FIRST_READINESS_RETRY`]. A server that listens a few milliseconds
/// after its start (the usual case) is found ready that much later, not 100 ms later
/// (`ready.sh`: the first check raced httpd's listen and lost most of the time).
pub const FIRST_READINESS_PAUSE: Duration = Duration::from_millis(10);

/// The pause from one readiness check's start to the next, after `failed` checks in a
/// row: until the replica has been ready once, [`FIRST_READINESS_PAUSE`] doubling up to
/// [`FIRST_READINESS_RETRY`] (never longer than the period); the period after.
pub fn readiness_pause(ready_once: bool, failed: u32, period: Duration) -> Duration {
    if ready_once {
        return period;
    }
    let doubled = FIRST_READINESS_PAUSE.saturating_mul(1u32 << failed.saturating_sub(1).min(16));
    doubled.min(FIRST_READINESS_RETRY).min(period)
}

/// Probes every period. A startup probe (`until_success`) returns at its first success;
/// a liveness probe runs until it fails `failure_threshold` times in a row. `Err` carries
/// the last failure.
async fn probe_until_verdict(
    probe: &pb::Probe,
    target: &ProbeTarget,
    checks: &dyn ProbeChecks,
    until_success: bool,
    record: &(dyn Fn(bool) + Sync),
) -> Result<(), String> {
    tokio::time::sleep(Duration::from_secs(u64::from(probe.initial_delay_seconds))).await;
    let mut tracker = ProbeTracker::default();
    let mut ticks = tokio::time::interval(Duration::from_secs(u64::from(probe.period_seconds.max(1))));
    loop {
        ticks.tick().await;
        let result = checks.check(probe, target).await;
        record(result.is_ok());
        let success_threshold = if until_success { 1 } else { probe.success_threshold };
        match (tracker.observe(result.is_ok(), success_threshold, probe.failure_threshold), &result) {
            (Some(true), _) if until_success => return Ok(()),
            (Some(false), Err(why)) => return Err(why.clone()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::type_complexity)] // a table
    fn thresholds_decide() {
        // (results, success threshold, failure threshold, verdict changes)
        let table: [(&[bool], u32, u32, &[Option<bool>]); 4] = [
            (&[true], 1, 3, &[Some(true)]),
            (&[false, false, false], 1, 3, &[None, None, Some(false)]),
            (&[false, true, false, false, false], 1, 3, &[None, Some(true), None, None, Some(false)]),
            (&[true, true, false, true, true], 2, 1, &[None, Some(true), Some(false), None, Some(true)]),
        ];
        for (results, success, failure, expected) in table {
            let mut tracker = ProbeTracker::default();
            let seen: Vec<Option<bool>> = results.iter().map(|&ok| tracker.observe(ok, success, failure)).collect();
            assert_eq!(seen, expected, "{results:?} with thresholds {success}/{failure}");
        }
    }

    #[test]
    fn readiness_is_checked_quickly_until_first_ready_then_every_period() {
        let (second, ms) = (Duration::from_secs(1), Duration::from_millis);
        // (ready once, failed checks in a row, period, pause)
        #[rustfmt::skip]
        let table = [
            (false, 1, second, ms(10)), (false, 2, second, ms(20)), (false, 3, second, ms(40)), (false, 4, second, ms(80)),
            (false, 5, second, FIRST_READINESS_RETRY), (false, 500, second, FIRST_READINESS_RETRY),
            (false, 0, second, ms(10)), // a check that succeeded below the success threshold
            (true, 0, second, second), (true, 3, second, second),
            (false, 5, ms(50), ms(50)),
        ];
        for (ready_once, failed, period, want) in table {
            assert_eq!(readiness_pause(ready_once, failed, period), want, "ready once: {ready_once}, {failed} failed, period {period:?}");
        }
    }

    /// Fails its first `failures` checks, then succeeds; counts the checks.
    struct WarmingUp {
        failures: u32,
        checks: std::sync::atomic::AtomicU32,
    }

    #[async_trait::async_trait]
    impl ProbeChecks for WarmingUp {
        async fn check(&self, _: &pb::Probe, _: &ProbeTarget) -> Result<(), String> {
            let n = self.checks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n < self.failures {
                Err("connection refused".into())
            } else {
                Ok(())
            }
        }
    }

    /// On tokio's paused clock: a replica whose server listens after its first two checks
    /// is ready on the third, 30 ms in (10 ms, then 20) — not a 10 s period later — and is
    /// then checked once per period.
    #[tokio::test(start_paused = true)]
    async fn a_new_replica_is_ready_on_the_first_check_that_succeeds() {
        let checks = Arc::new(WarmingUp { failures: 2, checks: Default::default() });
        let readiness = pb::Probe { period_seconds: 10, success_threshold: 1, failure_threshold: 3, ..Default::default() };
        let probes = pb::Probes { readiness: Some(readiness), ..Default::default() };
        let target = ProbeTarget { ip: None, helper: PathBuf::new(), exec: ExecRequest::default() };
        let (events, mut received) = mpsc::channel(8);
        let start = tokio::time::Instant::now();
        tokio::spawn(run_probes(probes, target, Arc::clone(&checks) as Arc<dyn ProbeChecks>, events, Arc::new(|_, _| {})));
        assert_eq!(received.recv().await, Some(ProbeEvent::Ready(true, String::new())));
        assert_eq!(start.elapsed(), FIRST_READINESS_PAUSE * 3);
        assert_eq!(checks.checks.load(std::sync::atomic::Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(checks.checks.load(std::sync::atomic::Ordering::SeqCst), 5, "then one check per 10 s period");
    }

    #[tokio::test]
    async fn tcp_and_http_against_a_loopback_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = u32::from(listener.local_addr().expect("address").port());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                let n = stream.read(&mut buffer).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buffer[..n]).to_string();
                let status = if request.starts_with("GET /ok ") { "200 OK" } else { "503 Service Unavailable" };
                let _ = stream.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let target = ProbeTarget { ip: Some(Ipv4Addr::LOCALHOST), helper: PathBuf::new(), exec: ExecRequest::default() };
        let probe = |handler| pb::Probe { handler: Some(handler), timeout_seconds: 2, ..Default::default() };
        let http = |path: &str| pb::probe::Handler::HttpGet(pb::HttpGetAction { path: path.into(), port, http_headers: vec![] });
        assert_eq!(check(&probe(http("/ok")), &target).await, Ok(()));
        let failed = check(&probe(http("/down")), &target).await.expect_err("503 fails");
        assert!(failed.contains("status 503"), "{failed}");
        assert_eq!(check(&probe(pb::probe::Handler::TcpSocket(pb::TcpSocketAction { port })), &target).await, Ok(()));
    }
}
