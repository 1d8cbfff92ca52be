//! The daemon's half of the orphan-fragment slow path (RFC 4787 REQ-14; the protocol is in
//! `podgate_common::frag`): inbound fragments that reached the node before their first fragment
//! arrive here through the `frag4_punt` ring buffer, wait in a bounded [`Store`], and once the
//! first fragment has been translated (a release record, or its `frag4` entry) go through
//! `uplink_xdp` again ([`Reinjector`]), which now translates them like any later fragment (or
//! passes them untouched when the datagram is the node's own).

use std::{
    collections::{BTreeMap, HashMap},
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, RingBuf},
    programs::{ProgramError, TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use aya_obj::programs::XdpAttachType;
use podgate_common::{
    frag::{PUNT_ORPHAN, PUNT_RELEASE, PuntHdr, map_names},
    nat::{FRAG_TIMEOUT_NS, FragKey4, FragVal4, map_names as nat_names},
};
use thiserror::Error;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{debug, info, warn};

use super::metrics::{DaemonMetrics, PuntStats};
use crate::{
    attach::UPLINK_XDP,
    error::DataplaneError,
    maps::{self, map_err},
    util::boottime_ns,
    pins::Pins,
};

/// How far ahead the daemon moves its liveness deadline, and how often it does so. Once a
/// SIGKILLed daemon's deadline has passed, the programs drop orphans as `drop_frag_orphan`
/// again instead of filling a ring nobody reads.
pub const ALIVE_AHEAD: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_secs(1);
/// Held keys rechecked against `frag4` per tick, newest first: a release record lost to a full
/// ring still frees its orphans, without a flood of bogus orphans costing a lookup each.
const RECHECK_PER_TICK: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of frames held in all.
    pub max_bytes: usize,
    /// Fragments held for one datagram.
    pub max_per_datagram: usize,
    /// Age after which a held fragment is dropped: the kernel's own reassembly timeout.
    pub max_age_ns: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 4 << 20,
            max_per_datagram: 64,
            max_age_ns: FRAG_TIMEOUT_NS,
        }
    }
}

struct Held {
    key: FragKey4,
    time_ns: u64,
    frame: Vec<u8>,
}

/// Orphans by arrival; oldest dropped first when a limit is reached.
#[derive(Default)]
pub struct Store {
    limits: Limits,
    next: u64,
    by_seq: BTreeMap<u64, Held>,
    by_key: HashMap<FragKey4, Vec<u64>>,
    bytes: usize,
}

/// Why [`Store::hold`] did not keep a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    TooOld,
    TooBig,
    DatagramFull,
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        Self { limits, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `frame` (punted at `time_ns`) until [`Store::take`]; returns how many older
    /// fragments were evicted to make room.
    pub fn hold(&mut self, key: FragKey4, frame: Vec<u8>, time_ns: u64, now: u64) -> Result<usize, Refused> {
        if now.saturating_sub(time_ns) > self.limits.max_age_ns {
            return Err(Refused::TooOld);
        }
        if frame.len() > self.limits.max_bytes {
            return Err(Refused::TooBig);
        }
        if self.by_key.get(&key).is_some_and(|v| v.len() >= self.limits.max_per_datagram) {
            return Err(Refused::DatagramFull);
        }
        let mut evicted = 0;
        while self.bytes + frame.len() > self.limits.max_bytes {
            self.pop_oldest();
            evicted += 1;
        }
        let seq = self.next;
        self.next += 1;
        self.bytes += frame.len();
        self.by_key.entry(key).or_default().push(seq);
        self.by_seq.insert(seq, Held { key, time_ns, frame });
        Ok(evicted)
    }

    /// Every fragment held for `key`, in arrival order.
    pub fn take(&mut self, key: &FragKey4) -> Vec<Vec<u8>> {
        let Some(seqs) = self.by_key.remove(key) else { return Vec::new() };
        seqs.iter()
            .filter_map(|s| self.by_seq.remove(s))
            .map(|h| {
                self.bytes -= h.frame.len();
                h.frame
            })
            .collect()
    }

    /// Drops what is older than the age limit; how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let mut n = 0;
        // Arrival order is punt order, so the oldest are first (a record read late after a
        // restart may be older than its successors: it was refused as TooOld already).
        while let Some((_, h)) = self.by_seq.first_key_value() {
            if now.saturating_sub(h.time_ns) <= self.limits.max_age_ns {
                break;
            }
            self.pop_oldest();
            n += 1;
        }
        n
    }

    /// Distinct keys, newest first, at most `n`.
    pub fn newest_keys(&self, n: usize) -> Vec<FragKey4> {
        let mut out: Vec<FragKey4> = Vec::new();
        for h in self.by_seq.values().rev() {
            if out.len() >= n {
                break;
            }
            if !out.contains(&h.key) {
                out.push(h.key);
            }
        }
        out
    }

    fn pop_oldest(&mut self) {
        let Some((seq, h)) = self.by_seq.pop_first() else { return };
        self.bytes -= h.frame.len();
        if let Some(v) = self.by_key.get_mut(&h.key) {
            v.retain(|s| *s != seq);
            if v.is_empty() {
                self.by_key.remove(&h.key);
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum PuntError {
    #[error("running {prog} on a held fragment (BPF_PROG_TEST_RUN, live frames: Linux 5.18 or later)")]
    Reinject {
        prog: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("frag4_punt: {0}")]
    Ring(#[source] io::Error),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// Hands a held frame to `uplink_xdp` again, as if the uplink had just received it
/// (`BPF_F_TEST_XDP_LIVE_FRAMES`): the program now finds the first fragment's `frag4` entry,
/// translates the frame (unless the datagram is the node's own) and passes it, and the kernel
/// delivers it to the stack on the uplink.
///
/// Not a raw socket toward the pod: on a node with conntrack loaded (kube-proxy), defragmentation
/// in PREROUTING holds the translated first fragment until the rest of its datagram arrives
/// there too, and a locally sent fragment never passes PREROUTING, so the pod would get nothing.
pub struct Reinjector {
    prog: Xdp,
    uplink_ifindex: u32,
}

impl Reinjector {
    pub fn open(pins: &Pins) -> Result<Self, PuntError> {
        let prog = Xdp::from_pin(pins.prog(UPLINK_XDP), XdpAttachType::Interface)
            .map_err(|source| PuntError::Reinject { prog: UPLINK_XDP, source })?;
        let uplink_ifindex = maps::read_node(pins)?.uplink_ifindex;
        Ok(Self { prog, uplink_ifindex })
    }

    /// Runs the program over `frame` (Ethernet, as received on the uplink).
    pub fn reinject(&mut self, frame: &[u8]) -> Result<(), PuntError> {
        // struct xdp_md: data_end = the length, ingress_ifindex = the uplink, receive queue 0.
        let mut md = [0u8; 24];
        md[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        md[12..16].copy_from_slice(&self.uplink_ifindex.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&md);
        opts.attrs = TestRunAttrs::new().xdp_live_frames(1);
        self.prog
            .test_run(opts)
            .map(|_| ())
            .map_err(|source| PuntError::Reinject { prog: UPLINK_XDP, source })
    }
}

/// Sets the liveness deadline the programs check; on drop (clean shutdown: the daemon's runtime
/// drops its tasks) clears it, so orphans are plain counted drops at once instead of after
/// [`ALIVE_AHEAD`].
struct Alive(Array<MapData, u64>);

impl Alive {
    fn refresh(&mut self) -> Result<(), PuntError> {
        let until = boottime_ns() + ALIVE_AHEAD.as_nanos() as u64;
        self.0.set(0, until, 0).map_err(map_err(map_names::FRAG4_PUNT_ALIVE))?;
        Ok(())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        if let Err(e) = self.0.set(0, 0, 0) {
            warn!("clearing the orphan-fragment deadline: {e}");
        }
    }
}

/// Everything the task works with.
struct Punt {
    ring: AsyncFd<RingBuf<MapData>>,
    frag4: BpfHashMap<MapData, FragKey4, FragVal4>,
    alive: Alive,
    reinjector: Reinjector,
    store: Store,
    stats: PuntStats,
}

/// The daemon task: runs until the runtime drops it. Failing to start leaves the programs
/// dropping orphans as before (the deadline is never set), which is logged.
pub async fn run(pins: Pins, metrics: Arc<Mutex<DaemonMetrics>>) {
    let mut p = match Punt::open(&pins) {
        Ok(p) => p,
        Err(e) => {
            warn!("orphan fragments will be dropped: the slow path did not start: {e:#}");
            return;
        }
    };
    info!("orphan fragments go through the daemon (frag4_punt)");
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            r = p.ring.readable_mut() => match r {
                Ok(mut guard) => {
                    guard.clear_ready();
                    drop(guard);
                    p.drain();
                }
                Err(e) => {
                    warn!("frag4_punt: {e}; orphan fragments will be dropped");
                    return;
                }
            },
            _ = tick.tick() => {
                if let Err(e) = p.alive.refresh() {
                    warn!("refreshing the orphan-fragment deadline: {e:#}");
                }
                // Also here: a record submitted between a drain and its wakeup is not lost.
                p.drain();
                p.tick(boottime_ns());
            }
        }
        metrics.lock().expect("metrics lock").frag_punt = PuntStats {
            held: p.store.len() as u64,
            held_bytes: p.store.bytes() as u64,
            ..p.stats
        };
    }
}

impl Punt {
    fn open(pins: &Pins) -> Result<Self, PuntError> {
        let ring = RingBuf::try_from(maps::open_map(pins, map_names::FRAG4_PUNT)?)
            .map_err(map_err(map_names::FRAG4_PUNT))?;
        // SAFETY: the ring map owns its fd and keeps it, unchanged, for as long as it lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| PuntError::Ring(e.into()))?;
        let frag4 = maps::open_hash(pins, nat_names::FRAG4)?;
        let alive = Array::try_from(maps::open_map(pins, map_names::FRAG4_PUNT_ALIVE)?)
            .map_err(map_err(map_names::FRAG4_PUNT_ALIVE))?;
        let reinjector = Reinjector::open(pins)?;
        let mut alive = Alive(alive);
        alive.refresh()?;
        Ok(Self { ring, frag4, alive, reinjector, store: Store::new(Limits::default()), stats: PuntStats::default() })
    }

    /// Handles every record in the ring.
    fn drain(&mut self) {
        let now = boottime_ns();
        let mut recs = Vec::new();
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            recs.push(item.to_vec());
        }
        for r in recs {
            self.record(&r, now);
        }
    }

    fn record(&mut self, r: &[u8], now: u64) {
        if r.len() < size_of::<PuntHdr>() {
            return;
        }
        // SAFETY: the programs write a PuntHdr first; read unaligned from the copy.
        let h: PuntHdr = unsafe { std::ptr::read_unaligned(r.as_ptr() as *const PuntHdr) };
        match h.kind {
            PUNT_ORPHAN => {
                let data = &r[size_of::<PuntHdr>()..];
                let frame = data[..(h.len as usize).min(data.len())].to_vec();
                // The first fragment may have been translated while this record waited in the
                // ring (before its pending key existed): then no release record follows.
                if self.frag4.get(&h.key, 0).is_ok() {
                    self.send(&frame);
                    return;
                }
                match self.store.hold(h.key, frame, h.time_ns, now) {
                    Ok(evicted) => self.stats.dropped += evicted as u64,
                    Err(Refused::TooOld) => self.stats.expired += 1,
                    Err(why) => {
                        debug!(?why, key = ?h.key, "orphan fragment not held");
                        self.stats.dropped += 1;
                    }
                }
            }
            PUNT_RELEASE => {
                for frame in self.store.take(&h.key) {
                    self.send(&frame);
                }
            }
            k => debug!(kind = k, "unknown frag4_punt record"),
        }
    }

    fn tick(&mut self, now: u64) {
        self.stats.expired += self.store.expire(now) as u64;
        for key in self.store.newest_keys(RECHECK_PER_TICK) {
            if self.frag4.get(&key, 0).is_ok() {
                for frame in self.store.take(&key) {
                    self.send(&frame);
                }
            }
        }
    }

    /// The program translates the frame by its `frag4` entry (the release record's address is
    /// the same one) and counts it as `frag_translated`, or passes it to the stack untouched
    /// (`frag_passed`) when the datagram is the node's own.
    fn send(&mut self, frame: &[u8]) {
        match self.reinjector.reinject(frame) {
            Ok(()) => self.stats.released += 1,
            Err(e) => {
                if self.stats.reinject_errors == 0 {
                    warn!("{e:#}");
                }
                self.stats.reinject_errors += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(id: u16) -> FragKey4 {
        FragKey4 { src: [198, 51, 100, 1], dst: [192, 0, 2, 10], id, proto: 17, dir: 1 }
    }

    fn limits(max_bytes: usize, per: usize) -> Limits {
        Limits { max_bytes, max_per_datagram: per, max_age_ns: 30 * S }
    }

    #[test]
    fn hold_and_take_in_arrival_order() {
        let mut s = Store::new(Limits::default());
        s.hold(key(1), vec![1; 10], 5 * S, 5 * S).unwrap();
        s.hold(key(2), vec![2; 20], 5 * S, 5 * S).unwrap();
        s.hold(key(1), vec![3; 30], 6 * S, 6 * S).unwrap();
        assert_eq!((s.len(), s.bytes()), (3, 60));
        assert_eq!(s.take(&key(1)), vec![vec![1; 10], vec![3; 30]]);
        assert_eq!((s.len(), s.bytes()), (1, 20));
        assert!(s.take(&key(1)).is_empty());
        assert_eq!(s.take(&key(2)), vec![vec![2; 20]]);
        assert!(s.is_empty() && s.bytes() == 0);
    }

    #[test]
    fn byte_cap_evicts_oldest_first() {
        let mut s = Store::new(limits(100, 64));
        for i in 0..5u16 {
            assert_eq!(s.hold(key(i), vec![0; 30], S, S), Ok(if i >= 3 { 1 } else { 0 }));
        }
        assert_eq!((s.len(), s.bytes()), (3, 90));
        assert!(s.take(&key(0)).is_empty() && s.take(&key(1)).is_empty());
        assert_eq!(s.take(&key(4)).len(), 1);
        assert_eq!(s.hold(key(9), vec![0; 101], S, S), Err(Refused::TooBig));
    }

    #[test]
    fn per_datagram_cap() {
        let mut s = Store::new(limits(1 << 20, 2));
        s.hold(key(1), vec![0; 8], S, S).unwrap();
        s.hold(key(1), vec![0; 8], S, S).unwrap();
        assert_eq!(s.hold(key(1), vec![0; 8], S, S), Err(Refused::DatagramFull));
        assert_eq!(s.hold(key(2), vec![0; 8], S, S), Ok(0));
    }

    #[test]
    fn age_limit_on_arrival_and_on_expiry() {
        let mut s = Store::new(limits(1 << 20, 64));
        // Read 31 s after it was punted (a restarted daemon reading an old ring).
        assert_eq!(s.hold(key(1), vec![0; 8], S, 32 * S), Err(Refused::TooOld));
        s.hold(key(2), vec![0; 8], 10 * S, 10 * S).unwrap();
        s.hold(key(3), vec![0; 8], 20 * S, 20 * S).unwrap();
        assert_eq!(s.expire(40 * S), 0, "exactly 30 s old is kept");
        assert_eq!(s.expire(40 * S + 1), 1);
        assert_eq!(s.newest_keys(10), vec![key(3)]);
        assert_eq!(s.expire(51 * S), 1);
        assert!(s.is_empty() && s.bytes() == 0);
    }

    #[test]
    fn newest_keys_are_distinct_and_capped() {
        let mut s = Store::new(Limits::default());
        for i in [1u16, 2, 1, 3, 3] {
            s.hold(key(i), vec![0; 8], S, S).unwrap();
        }
        assert_eq!(s.newest_keys(10), vec![key(3), key(1), key(2)]);
        assert_eq!(s.newest_keys(2), vec![key(3), key(1)]);
    }
}
