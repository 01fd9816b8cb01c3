//! Several BuildKit daemons as one builder fleet: which are reachable (probed in parallel), where each service
//! builds (rendezvous hashing of its name over the builders' addresses, so that a service keeps going to the daemon
//! that has its cache), how many builds each daemon takes at once (`max_parallel`), and the one retry of a build
//! whose daemon went away mid-solve, on the next builder in that service's ranking.
//!
//! A run with one builder is the same run as before fleets existed: the same probe, the same errors.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Addr, Client, ConnectError, RpcError, TlsOptions};

/// How long the probe of each builder may take at the start of a run: a daemon that does not answer by then is
/// skipped (the others build its services).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The blake3 derive key of placement scores. Changing it moves services between builders (and away from their
/// cache) once.
const PLACEMENT_KEY: &str = "buildopt 2026-12-10 builder placement v1";

/// One builder as configured: where it is, how to reach it, and how many builds it takes at once.
#[derive(Debug, Clone)]
pub struct BuilderSpec {
    /// The daemon.
    pub addr: Addr,
    /// TLS settings for `tcp://`.
    pub tls: TlsOptions,
    /// Builds at once on this daemon (default: None, only `--jobs` limits).
    pub max_parallel: Option<usize>,
    /// On dockerd, carry sessions over `Control.Session` (see [`Client::session_over_control`]).
    pub session_over_control: bool,
}

/// The score of `service` on the builder at `addr` in rendezvous (highest random weight) hashing: each service
/// ranks the builders by this score, highest first. Removing a builder moves only the services that ranked it
/// first; adding one takes over only the services that now rank it first.
pub fn placement_score(addr: &str, service: &str) -> u64 {
    let mut h = blake3::Hasher::new_derive_key(PLACEMENT_KEY);
    h.update(addr.as_bytes());
    h.update(b"\n");
    h.update(service.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// `addrs` (indexes) in `service`'s order of preference: by [`placement_score`], highest first; ties (never seen
/// in practice) by address.
pub fn rank<'a>(addrs: impl IntoIterator<Item = &'a str>, service: &str) -> Vec<usize> {
    let mut scored: Vec<(u64, &str, usize)> = addrs
        .into_iter()
        .enumerate()
        .map(|(i, a)| (placement_score(a, service), a, i))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, _, i)| i).collect()
}

/// Why a builder was not usable at the start of a run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The connection failed (unreachable, TLS).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Connected, but the daemon did not answer as BuildKit.
    #[error("BuildKit at {addr} did not answer")]
    Rpc {
        /// The daemon.
        addr: String,
        /// The failed call.
        #[source]
        source: RpcError,
    },
    /// No answer within [`PROBE_TIMEOUT`].
    #[error(
        "BuildKit at {addr} did not answer within {}s; check that it is running and not overloaded",
        timeout.as_secs()
    )]
    Timeout {
        /// The daemon.
        addr: String,
        /// How long it had.
        timeout: Duration,
    },
}

impl crate::error::Classify for ProbeError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ProbeError::Connect(e) => e.kind(),
            _ => crate::error::ErrorKind::Failure,
        }
    }
}

/// No builder of the run could be reached.
#[derive(Debug, thiserror::Error)]
pub struct NoBuilder {
    /// Each builder's failure, in configuration order.
    pub failures: Vec<ProbeError>,
}

impl fmt::Display for NoBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failures.as_slice() {
            // One builder: its own error, exactly as before fleets.
            [one] => write!(f, "{}", crate::error::one_line(one)),
            many => {
                write!(
                    f,
                    "none of the {} BuildKit builders is reachable: ",
                    many.len()
                )?;
                let each: Vec<String> = many.iter().map(|e| crate::error::one_line(e)).collect();
                write!(f, "{}", each.join("; "))
            }
        }
    }
}

impl crate::error::Classify for NoBuilder {
    /// A usage error only when every builder failed for a setting of the caller's (certificates, names).
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        if self.failures.iter().all(|e| e.kind() == ErrorKind::Usage) {
            ErrorKind::Usage
        } else {
            ErrorKind::Failure
        }
    }
}

/// Connects to `spec` and asks for its workers, within `timeout`.
async fn probe_within(spec: &BuilderSpec, timeout: Duration) -> Result<Client, ProbeError> {
    let addr = spec.addr.to_string();
    let probe = async {
        let client = Client::connect(&spec.addr, &spec.tls)
            .await?
            .session_over_control(spec.session_over_control);
        client.workers().await.map_err(|source| ProbeError::Rpc {
            addr: addr.clone(),
            source,
        })?;
        Ok(client)
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout {
            addr: addr.clone(),
            timeout,
        }),
    }
}

/// A reachable builder.
#[derive(Debug)]
struct Member {
    spec: BuilderSpec,
    name: String,
    client: Client,
}

/// What each member is doing.
#[derive(Debug, Default)]
struct Load {
    running: usize,
    lost: bool,
}

/// The reachable builders of a run, and the builds running on each.
#[derive(Debug)]
pub struct Fleet {
    members: Vec<Member>,
    load: Mutex<Vec<Load>>,
    freed: tokio::sync::Notify,
}

/// A builder that was skipped at the start of the run, with why.
pub type Skipped = ProbeError;

/// What [`Fleet::acquire`] found.
#[derive(Debug)]
pub enum Acquired {
    /// A place on a builder.
    Lease(Lease),
    /// Every usable builder is at its `max_parallel`: try again when a build ends.
    Busy,
    /// No usable builder is left (all were lost during the run).
    NoneLeft,
}

impl Fleet {
    /// Probes every builder in parallel; returns the fleet of the reachable ones and the failures of the others, or
    /// [`NoBuilder`] when none answered.
    pub async fn probe(specs: &[BuilderSpec]) -> Result<(Fleet, Vec<Skipped>), NoBuilder> {
        Fleet::probe_within(specs, PROBE_TIMEOUT).await
    }

    async fn probe_within(
        specs: &[BuilderSpec],
        timeout: Duration,
    ) -> Result<(Fleet, Vec<Skipped>), NoBuilder> {
        let probes = specs.iter().map(|s| probe_within(s, timeout));
        let results = futures::future::join_all(probes).await;
        let mut members = Vec::new();
        let mut skipped = Vec::new();
        for (spec, result) in specs.iter().zip(results) {
            match result {
                Ok(client) => members.push(Member {
                    name: spec.addr.to_string(),
                    spec: spec.clone(),
                    client,
                }),
                Err(e) => skipped.push(e),
            }
        }
        if members.is_empty() {
            return Err(NoBuilder { failures: skipped });
        }
        Ok((Fleet::of(members), skipped))
    }

    fn of(members: Vec<Member>) -> Fleet {
        let load = members.iter().map(|_| Load::default()).collect();
        Fleet {
            members,
            load: Mutex::new(load),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// The member indexes in `service`'s order of preference.
    fn ranking(&self, service: &str) -> Vec<usize> {
        rank(self.members.iter().map(|m| m.name.as_str()), service)
    }

    /// A place for `service` now: the first builder in its ranking that is not lost, not in `exclude` and below its
    /// `max_parallel`.
    pub fn try_acquire(self: &Arc<Self>, service: &str, exclude: &[usize]) -> Acquired {
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        let mut usable = false;
        for i in self.ranking(service) {
            if load[i].lost || exclude.contains(&i) {
                continue;
            }
            usable = true;
            if self.members[i]
                .spec
                .max_parallel
                .is_none_or(|max| load[i].running < max)
            {
                load[i].running += 1;
                return Acquired::Lease(Lease {
                    fleet: self.clone(),
                    index: i,
                });
            }
        }
        if usable {
            Acquired::Busy
        } else {
            Acquired::NoneLeft
        }
    }

    /// [`Fleet::try_acquire`], waiting while every usable builder is busy; None when none is left.
    pub async fn acquire(self: &Arc<Self>, service: &str, exclude: &[usize]) -> Option<Lease> {
        loop {
            // Registered before looking, so that a build ending in between is not missed.
            let freed = self.freed.notified();
            match self.try_acquire(service, exclude) {
                Acquired::Lease(l) => return Some(l),
                Acquired::NoneLeft => return None,
                Acquired::Busy => freed.await,
            }
        }
    }

    /// Takes builder `index` out of the run: its connection was lost mid-solve.
    fn mark_lost(&self, index: usize) {
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        load[index].lost = true;
        drop(load);
        self.freed.notify_waiters();
    }

    /// Runs `attempt` on the leased builder; when `lost` says the builder went away during it, takes that builder
    /// out of the run and runs `attempt` once more on the next usable builder in `service`'s ranking (waiting for
    /// a place there), after telling `retrying` (lost builder, next builder). The second attempt's result stands,
    /// whatever it is.
    pub async fn with_failover<T, Fut>(
        self: &Arc<Self>,
        lease: Lease,
        service: &str,
        mut attempt: impl FnMut(Client) -> Fut,
        lost: impl Fn(&T) -> bool,
        retrying: impl FnOnce(&str, &str),
    ) -> Attempted<T>
    where
        Fut: Future<Output = T>,
    {
        let first = attempt(lease.client().clone()).await;
        if !lost(&first) {
            return Attempted {
                result: first,
                builder: lease.name().to_owned(),
                retried_from: None,
            };
        }
        let (from, index) = (lease.name().to_owned(), lease.index);
        self.mark_lost(index);
        drop(lease);
        let Some(next) = self.acquire(service, &[index]).await else {
            return Attempted {
                result: first,
                builder: from,
                retried_from: None,
            };
        };
        retrying(&from, next.name());
        let second = attempt(next.client().clone()).await;
        Attempted {
            result: second,
            builder: next.name().to_owned(),
            retried_from: Some(from),
        }
    }
}

/// The result of [`Fleet::with_failover`] and where it came from.
#[derive(Debug)]
pub struct Attempted<T> {
    /// The last attempt's result.
    pub result: T,
    /// The builder of the last attempt.
    pub builder: String,
    /// The builder lost during the first attempt, when there was a second.
    pub retried_from: Option<String>,
}

/// A place on one builder for one build; given back when dropped.
#[derive(Debug)]
pub struct Lease {
    fleet: Arc<Fleet>,
    index: usize,
}

impl Lease {
    /// The builder's client.
    pub fn client(&self) -> &Client {
        &self.fleet.members[self.index].client
    }

    /// The builder's address, as configured.
    pub fn name(&self) -> &str {
        &self.fleet.members[self.index].name
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut load = self.fleet.load.lock().unwrap_or_else(|p| p.into_inner());
        load[self.index].running = load[self.index].running.saturating_sub(1);
        drop(load);
        self.fleet.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str, max_parallel: Option<usize>) -> BuilderSpec {
        BuilderSpec {
            addr: addr.parse().unwrap(),
            tls: TlsOptions::default(),
            max_parallel,
            session_over_control: false,
        }
    }

    /// A fleet of unconnected clients (channels connect lazily), for placement alone.
    fn fleet(specs: &[BuilderSpec]) -> Arc<Fleet> {
        let members = specs
            .iter()
            .map(|s| Member {
                name: s.addr.to_string(),
                spec: s.clone(),
                client: Client::lazy(&s.addr),
            })
            .collect();
        Arc::new(Fleet::of(members))
    }

    fn services() -> Vec<String> {
        (0..400).map(|i| format!("svc-{i}")).collect()
    }

    #[test]
    fn placement_is_spread_and_moves_only_what_a_new_builder_takes() {
        let two = ["tcp://b0:1234", "tcp://b1:1234"];
        let three = ["tcp://b0:1234", "tcp://b1:1234", "tcp://b2:1234"];
        let first = |addrs: &[&str], s: &str| addrs[rank(addrs.iter().copied(), s)[0]].to_owned();
        let mut on = [0usize; 3];
        for s in services() {
            let before = first(&two, &s);
            let after = first(&three, &s);
            // Rendezvous: a service moves only to the new builder.
            assert!(
                after == before || after == three[2],
                "{s}: {before} -> {after}"
            );
            on[three.iter().position(|a| *a == after).unwrap()] += 1;
        }
        // About a third each (400 services; the bounds are far beyond chance for a uniform hash).
        for n in on {
            assert!((80..190).contains(&n), "{on:?}");
        }
        // The ranking does not depend on the order the builders are listed in.
        let reversed = ["tcp://b1:1234", "tcp://b0:1234"];
        for s in services() {
            assert_eq!(first(&two, &s), first(&reversed, &s), "{s}");
        }
    }

    #[test]
    fn placement_score_is_the_documented_hash() {
        let mut h = blake3::Hasher::new_derive_key("buildopt 2026-12-10 builder placement v1");
        h.update(b"tcp://b0:1234\napp");
        let bytes: [u8; 8] = h.finalize().as_bytes()[..8].try_into().unwrap();
        assert_eq!(
            placement_score("tcp://b0:1234", "app"),
            u64::from_be_bytes(bytes)
        );
    }

    /// A service whose first choice among `fleet`'s members is `want`.
    fn service_preferring(f: &Fleet, want: usize) -> String {
        services()
            .into_iter()
            .find(|s| f.ranking(s)[0] == want)
            .unwrap()
    }

    #[tokio::test]
    async fn a_full_builder_sends_the_next_build_to_the_next_in_the_ranking() {
        let f = fleet(&[spec("tcp://b0:1", Some(1)), spec("tcp://b1:1", Some(1))]);
        let s = service_preferring(&f, 0);
        let Acquired::Lease(a) = f.try_acquire(&s, &[]) else {
            panic!()
        };
        assert_eq!(a.name(), "tcp://b0:1");
        let Acquired::Lease(b) = f.try_acquire(&s, &[]) else {
            panic!()
        };
        assert_eq!(b.name(), "tcp://b1:1");
        assert!(matches!(f.try_acquire(&s, &[]), Acquired::Busy));
        drop(a);
        let Acquired::Lease(c) = f.try_acquire(&s, &[]) else {
            panic!()
        };
        assert_eq!(c.name(), "tcp://b0:1", "its own builder again once free");
        // Waiting for a place: it comes when a build ends.
        let waiter = {
            let f = f.clone();
            let s = s.clone();
            tokio::spawn(async move { f.acquire(&s, &[]).await.map(|l| l.name().to_owned()) })
        };
        tokio::task::yield_now().await;
        drop(b);
        assert_eq!(waiter.await.unwrap().as_deref(), Some("tcp://b1:1"));
        drop(c);
    }

    #[tokio::test]
    async fn without_max_parallel_every_build_goes_to_the_first_choice() {
        let f = fleet(&[spec("tcp://b0:1", None), spec("tcp://b1:1", None)]);
        let s = service_preferring(&f, 1);
        let leases: Vec<Lease> = (0..10)
            .map(|_| match f.try_acquire(&s, &[]) {
                Acquired::Lease(l) => l,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(leases.iter().all(|l| l.name() == "tcp://b1:1"));
    }

    #[tokio::test]
    async fn a_lost_builder_is_retried_once_on_the_next_and_then_left_out() {
        let f = fleet(&[spec("tcp://b0:1", None), spec("tcp://b1:1", None)]);
        let s = service_preferring(&f, 0);
        let Acquired::Lease(lease) = f.try_acquire(&s, &[]) else {
            panic!()
        };
        let mut calls = Vec::new();
        let got = f
            .with_failover(
                lease,
                &s,
                |client| {
                    calls.push(client.addr().to_string());
                    let n = calls.len();
                    async move { n }
                },
                |n| *n == 1,
                |_, _| {},
            )
            .await;
        assert_eq!(calls, ["tcp://b0:1", "tcp://b1:1"]);
        assert_eq!(got.result, 2);
        assert_eq!(got.builder, "tcp://b1:1");
        assert_eq!(got.retried_from.as_deref(), Some("tcp://b0:1"));
        // The lost builder takes no more builds, even for services that prefer it.
        let Acquired::Lease(next) = f.try_acquire(&s, &[]) else {
            panic!()
        };
        assert_eq!(next.name(), "tcp://b1:1");
        // Lost on the second too: the second failure stands, and nothing is left.
        let got = f
            .with_failover(next, &s, |_| async { "lost" }, |_| true, |_, _| {})
            .await;
        assert_eq!((got.result, got.retried_from), ("lost", None));
        assert!(matches!(f.try_acquire(&s, &[]), Acquired::NoneLeft));
    }

    #[tokio::test]
    async fn the_probe_skips_unreachable_builders_and_names_each_when_none_answers() {
        let dir = tempfile::tempdir().unwrap();
        let gone = |n: &str| spec(&format!("unix://{}/{n}.sock", dir.path().display()), None);
        let err = Fleet::probe_within(&[gone("a"), gone("b")], Duration::from_secs(2))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("none of the 2 BuildKit builders is reachable: cannot connect to BuildKit at unix://"),
            "{text}"
        );
        assert!(
            text.contains("/a.sock: ") && text.contains("/b.sock: "),
            "{text}"
        );
        let one = Fleet::probe_within(&[gone("a")], Duration::from_secs(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            one.starts_with(&format!(
                "cannot connect to BuildKit at unix://{}/a.sock: check that buildkitd is running",
                dir.path().display()
            )),
            "{one}"
        );
    }
}
