//! Full NAT maps (issue 3 "LRU eviction only as a last resort and counted", issue 7 fault
//! "conntrack and NAT maps full"), through the real programs with shrunken maps and the
//! daemon's real GC (`podgate::snat::gc`) over a pinned view of them.
mod snat_common;
use std::{collections::HashSet, path::PathBuf};

use podgate::{pins::Pins, snat};
use podgate_common::{Timeouts, pressure, stats::Counter};
use snat_common::*;

/// The LRU's per-CPU free lists make eviction depend on which CPU inserts: one CPU keeps the
/// tests deterministic.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is an empty set; affects the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set), 0);
    }
}

/// The test's maps pinned to a private bpffs directory, the way the daemon sees them; removed
/// on drop.
struct PinView {
    dir: PathBuf,
    pins: Pins,
}

impl PinView {
    fn new(env: &Env, tag: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/podgate-test-full-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bpffs at /sys/fs/bpf");
        let view = Self { pins: Pins::new(&dir), dir };
        for n in ["node", "pods", "pods_v4", "pod_usage", "pod_freed", "ct4", "nat4_map", "nat4_claim", "frag4", "nat4_pressure"] {
            env.h.ebpf.map(n).unwrap_or_else(|| panic!("map {n}")).pin(view.dir.join(n)).expect("pin");
        }
        view
    }
}

impl Drop for PinView {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ncpus() -> u64 {
    aya::util::nr_cpus().unwrap() as u64
}

/// The fuzz tests' invariant, with one remote: every mapping holds exactly one claim, every
/// claim belongs to a mapping, and the pods' counts match.
fn assert_no_port_leak(env: &Env) {
    let maps: HashSet<_> = env.mappings().into_iter().map(|(k, m)| (k, m.ext_port)).collect();
    let claims: HashSet<_> = env.claims().into_iter().map(|(k, owner)| (owner, k.ext_port)).collect();
    assert_eq!(maps, claims, "claims and mappings differ");
    let held = env.held(env.pod_a).mappings + env.held(env.pod_b).mappings;
    assert_eq!(held as usize, maps.len(), "pods' mapping counts");
}

fn open_udp(env: &mut Env, i: u32) -> RunOutput {
    let (pod, addr) = if i % 2 == 0 { (env.pod_a, POD_A) } else { (env.pod_b, POD_B) };
    env.egress(pod, &udp(addr, 1024 + (i / 2) as u16, REMOTE1, 53, b"q"))
}

#[test]
fn near_full_maps_refuse_new_flows_and_recover_after_gc() {
    pin_to_cpu0();
    const SIZE: u32 = 1024;
    let mut env = Env::with(Config {
        max_entries: vec![("ct4", SIZE), ("nat4_map", SIZE), ("nat4_claim", SIZE)],
        ..Default::default()
    });
    let view = PinView::new(&env, "pressure");
    let high = pressure::high_water(SIZE as u64, ncpus()) as u32;
    assert!(high >= 256, "a 1024-entry map leaves no room on {} CPUs", ncpus());
    for i in 0..high {
        assert_eq!(open_udp(&mut env, i).verdict, TC_ACT_OK, "flow {i}");
    }
    // The daemon's pass: nothing expired, occupancy at the high-water mark.
    let r = snat::gc(&view.pins, &Timeouts::default(), podgate::config::DEFAULT_UNANSWERED_SECS, podgate::util::boottime_ns()).unwrap();
    assert_eq!((r.flows_seen, r.mappings_seen, r.claims_seen), (high as usize, high as usize, high as usize));
    assert_eq!(r.evictions(), 0, "{r:?}");
    assert!(snat::update_pressure(&view.pins, &r, false).unwrap(), "at the high-water mark");

    // New flows: refused before they touch a map, the pod told (3/13), counted.
    for i in high..high + 50 {
        let (pod, addr) = if i % 2 == 0 { (env.pod_a, POD_A) } else { (env.pod_b, POD_B) };
        let f = udp(addr, 1024 + (i / 2) as u16, REMOTE1, 53, b"q");
        assert_unreach_13(&env.egress(pod, &f), &f);
    }
    assert_eq!(env.counter(Counter::DropMapFull), 50);
    assert_eq!((env.ct_count(), env.mappings().len(), env.claims().len()), (high as usize, high as usize, high as usize));
    // Established flows are untouched, both ways; an existing mapping toward a new remote is a
    // new flow and waits too.
    let a = env.pod_a;
    let (_, ext) = snat_ok(&mut env, a, &udp(POD_A, 1024, REMOTE1, 53, b"again"));
    let back = parse_checked(&env.reverse_xdp(&udp(REMOTE1, 53, NODE_IP, ext, b"r")).packet);
    assert_eq!((back.ip.destination, ports(&back).1), (POD_A, 1024));
    let f = udp(POD_A, 1024, REMOTE2, 53, b"q");
    assert_unreach_13(&env.egress(a, &f), &f);
    assert_eq!(env.counter(Counter::LruEvictionSuspected), 0);
    assert_no_port_leak(&env);

    // Between the marks the guard stays on (no flapping at every pass).
    let r = snat::gc(&view.pins, &Timeouts::default(), podgate::config::DEFAULT_UNANSWERED_SECS, podgate::util::boottime_ns()).unwrap();
    assert!(snat::update_pressure(&view.pins, &r, true).unwrap());

    // Recovery: the flows time out (a later GC clock), the pass frees the maps, new flows work.
    let later = podgate::util::boottime_ns() + 3600 * 1_000_000_000;
    let r = snat::gc(&view.pins, &Timeouts::default(), podgate::config::DEFAULT_UNANSWERED_SECS, later).unwrap();
    assert_eq!((r.flows_expired, r.mappings_expired), (high as usize, high as usize));
    assert!(!snat::update_pressure(&view.pins, &r, true).unwrap());
    assert_eq!(open_udp(&mut env, high + 100).verdict, TC_ACT_OK);
    assert_eq!(env.counter(Counter::DropMapFull), 51);
    assert_no_port_leak(&env);
}

fn endpoint(i: u32) -> podgate_common::nat::Endpoint4 {
    ep(if i % 2 == 0 { POD_A } else { POD_B }, 1024 + (i / 2) as u16, UDP)
}

/// The GC clock for passes after [`age`]: an aged entry (seen at CLOCK_BOOTTIME 1 ns) must be
/// older than the UDP timeout, which it is not on a machine booted less than that ago (the
/// vm-test guests run this a few seconds after boot; their GC at `boottime_ns()` expired
/// nothing). Live entries were refreshed more than a second after boot, so at this clock they
/// are still inside their timeout.
fn gc_clock() -> u64 {
    let udp = u64::from(Timeouts::default().udp) * 1_000_000_000;
    podgate::util::boottime_ns().max(1 + udp + 1_000_000_000)
}

/// Ages flow `i` (and its mapping, if any) so that the next GC pass expires it: the flow ended.
fn age(env: &mut Env, i: u32) {
    let e = endpoint(i);
    let f = flow(e.addr, e.port, REMOTE1, 53, UDP);
    let mut ct: aya::maps::HashMap<_, podgate_common::nat::Flow4, podgate_common::nat::Ct4> =
        aya::maps::HashMap::try_from(env.h.ebpf.map_mut("ct4").unwrap()).unwrap();
    let mut c = ct.get(&f, 0).expect("flow");
    c.last_seen_ns = 1;
    ct.insert(f, c, 2).unwrap();
    if let Some(mut m) = env.mapping(e) {
        m.last_seen_ns = 1;
        env.set_mapping(e, m);
    }
}

#[test]
fn lru_evictions_are_counted_and_repaired_by_the_gc() {
    // No guard (no daemon): nat4_map is smaller than ct4 and nat4_claim, so filling it makes the
    // LRU evict mappings of live flows. That is the last resort the guard avoids; here it must
    // at least be counted, and the GC must put things right.
    pin_to_cpu0();
    let mut env = Env::with(Config {
        max_entries: vec![("ct4", 4096), ("nat4_map", 1024), ("nat4_claim", 4096)],
        ..Default::default()
    });
    let view = PinView::new(&env, "evict");
    const FLOWS: u32 = 1500;
    for i in 0..FLOWS {
        assert_eq!(open_udp(&mut env, i).verdict, TC_ACT_OK, "flow {i}");
    }
    let mapped: HashSet<_> = env.mappings().into_iter().map(|(k, _)| k).collect();
    let evicted: Vec<u32> = (0..FLOWS).filter(|&i| !mapped.contains(&endpoint(i))).collect();
    assert!(evicted.len() >= (FLOWS - 1024) as usize, "only {} mappings evicted", evicted.len());
    assert_eq!(env.counter(Counter::LruEvictionSuspected), 0);

    // Each flow's next packet still translates with its port (kept in its conntrack entry);
    // each missing mapping is counted.
    let mut ext = Vec::new();
    for i in 0..FLOWS {
        let o = open_udp(&mut env, i);
        assert_eq!(o.verdict, TC_ACT_OK);
        ext.push(ports(&parse_checked(&o.packet)).0);
    }
    assert_eq!(env.counter(Counter::LruEvictionSuspected), evicted.len() as u64);

    // Two flows in three end. The GC pass expires them and puts back the mappings of the live
    // ones the LRU dropped; the mappings lost with ended flows give their pods the quota back.
    let (live, ended): (Vec<u32>, Vec<u32>) = (0..FLOWS).partition(|i| i % 3 == 0);
    for &i in &ended {
        age(&mut env, i);
    }
    let held_before = env.held(env.pod_a).mappings + env.held(env.pod_b).mappings;
    assert_eq!(held_before, FLOWS as u64, "the programs counted every mapping they made");
    // Updating an entry of a full LRU map (the aging above) evicts too: look again.
    let mapped: HashSet<_> = env.mappings().into_iter().map(|(k, _)| k).collect();
    let evicted: Vec<u32> = (0..FLOWS).filter(|&i| !mapped.contains(&endpoint(i))).collect();
    let r = snat::gc(&view.pins, &Timeouts::default(), podgate::config::DEFAULT_UNANSWERED_SECS, gc_clock()).unwrap();
    let restore = evicted.iter().filter(|&&i| i % 3 == 0).count();
    let lost = evicted.iter().filter(|&&i| i % 3 != 0).count();
    assert_eq!(r.flows_expired, ended.len(), "{r:?}");
    assert_eq!(r.evicted_mappings_restored, restore, "{r:?}");
    assert_eq!(r.evicted_mappings_lost, lost, "{r:?}");
    assert_eq!(r.evicted_claims_restored, 0, "{r:?}");
    let want: HashSet<_> = live.iter().map(|&i| (endpoint(i), ext[i as usize])).collect();
    let maps: HashSet<_> = env.mappings().into_iter().map(|(k, m)| (k, m.ext_port)).collect();
    let claims: HashSet<_> = env.claims().into_iter().map(|(k, owner)| (owner, k.ext_port)).collect();
    assert_eq!(maps, want, "every live endpoint keeps its port");
    assert_eq!(claims, want, "claims == mappings: no port leaked");
    assert_no_port_leak(&env);

    // A second pass finds nothing more.
    let r = snat::gc(&view.pins, &Timeouts::default(), podgate::config::DEFAULT_UNANSWERED_SECS, gc_clock()).unwrap();
    assert_eq!(r.evictions(), 0, "{r:?}");

    // Flow and mapping both evicted (claims left behind, owned by nobody): the GC removes the
    // orphan claims and gives the quota back.
    let mut ct: aya::maps::HashMap<_, podgate_common::nat::Flow4, podgate_common::nat::Ct4> =
        aya::maps::HashMap::try_from(env.h.ebpf.map_mut("ct4").unwrap()).unwrap();
    for &i in &live[..10] {
        let e = endpoint(i);
        ct.remove(&flow(e.addr, e.port, REMOTE1, 53, UDP)).unwrap();
    }
    let mut m: aya::maps::HashMap<_, podgate_common::nat::Endpoint4, podgate_common::nat::Mapping4> =
        aya::maps::HashMap::try_from(env.h.ebpf.map_mut("nat4_map").unwrap()).unwrap();
    for &i in &live[..10] {
        m.remove(&endpoint(i)).unwrap();
    }
    let r = snat::gc(&view.pins, &Timeouts::default(), podgate::config::DEFAULT_UNANSWERED_SECS, gc_clock()).unwrap();
    assert_eq!((r.evicted_mappings_lost, r.orphan_claims_removed), (10, 10), "{r:?}");
    assert_no_port_leak(&env);
    assert_eq!(env.mappings().len(), live.len() - 10);
}

/// Marks flow `i` and its mapping idle since boot, if they still exist (a GC pass running
/// meanwhile may have taken them).
fn age_if_present(env: &mut Env, i: u32) {
    let e = endpoint(i);
    let f = flow(e.addr, e.port, REMOTE1, 53, UDP);
    let mut ct: aya::maps::HashMap<_, podgate_common::nat::Flow4, podgate_common::nat::Ct4> =
        aya::maps::HashMap::try_from(env.h.ebpf.map_mut("ct4").unwrap()).unwrap();
    if let Ok(mut c) = ct.get(&f, 0) {
        c.last_seen_ns = 1;
        let _ = ct.insert(f, c, 2);
    }
    if let Some(mut m) = env.mapping(e) {
        m.last_seen_ns = 1;
        env.set_mapping(e, m);
    }
}

type GcFn = fn(&Pins, &Timeouts, u64) -> anyhow::Result<snat::GcReport>;

/// Rounds of: every flow made idle, then refreshed by a packet while GC passes run on another
/// thread. A flow refreshed after a pass read it must keep its conntrack entry, mapping and
/// claim: the pass re-reads before it deletes.
fn refreshes_race_gc_passes(gc: GcFn) {
    use std::sync::{Arc, atomic::{AtomicBool, AtomicU32, Ordering}};
    let mut env = Env::new();
    let view = PinView::new(&env, "race");
    const FLOWS: u32 = 1024;
    const ROUNDS: u32 = 30;
    for i in 0..FLOWS {
        assert_eq!(open_udp(&mut env, i).verdict, TC_ACT_OK, "flow {i}");
    }
    let mut broken = Vec::new();
    let mut passes = 0;
    for round in 0..ROUNDS {
        for i in 0..FLOWS {
            age_if_present(&mut env, i);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU32::new(0));
        let t = {
            let (stop, done, pins) = (stop.clone(), done.clone(), view.pins.clone());
            std::thread::spawn(move || {
                // At least one pass; bounded at 10,000 whatever happens to the refresh sweep.
                loop {
                    gc(&pins, &Timeouts::default(), podgate::util::boottime_ns()).expect("gc pass");
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if stop.load(Ordering::Relaxed) || n >= 10_000 {
                        return n;
                    }
                }
            })
        };
        // One refresh sweep beside the passes: whatever a pass deletes after the sweep refreshed
        // it is a live flow's state lost (a later sweep would only hide it).
        for i in 0..FLOWS {
            assert_eq!(open_udp(&mut env, i).verdict, TC_ACT_OK, "round {round} flow {i}");
        }
        stop.store(true, Ordering::Relaxed);
        passes += t.join().expect("gc thread");
        // Every flow was refreshed after this round's aging: all of it is live.
        for i in 0..FLOWS {
            let e = endpoint(i);
            let ct = env.ct(flow(e.addr, e.port, REMOTE1, 53, UDP));
            let m = env.mapping(e);
            let ok = match (ct, m) {
                (Some(c), Some(m)) => env.claim(REMOTE1, c.ext_port, UDP) == Some(e) && m.ext_port == c.ext_port,
                _ => false,
            };
            if !ok {
                broken.push((round, i, ct.is_some(), m.is_some()));
            }
        }
    }
    assert!(passes >= ROUNDS, "the GC thread ran {passes} passes");
    let (no_ct, no_map) = (broken.iter().filter(|b| !b.2).count(), broken.iter().filter(|b| !b.3).count());
    assert!(
        broken.is_empty(),
        "{} live flows lost state after {passes} passes ({no_ct} without ct4, {no_map} without a mapping, the rest \
         without their claim or with a mismatched port) (round, flow, ct4?, mapping?): {:?}",
        broken.len(),
        &broken[..broken.len().min(10)]
    );
}

#[test]
#[ignore = "fails in about 1 run of 5 (13 of 60 measured runs, each losing 1-3 of its 30,720 racing \
            refreshes): the kernel has no compare-and-delete, so a program that looked a flow up \
            before the GC's per-key lookup-and-delete and writes its refresh after it writes into \
            the deleted element; the flow loses its ct4 entry or mapping until its next packet"]
fn gc_passes_racing_refreshes_never_take_a_live_flows_state() {
    refreshes_race_gc_passes(|p, t, n| Ok(snat::gc(p, t, podgate::config::DEFAULT_UNANSWERED_SECS, n)?));
}
