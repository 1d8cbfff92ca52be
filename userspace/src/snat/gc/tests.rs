//! The GC's decisions against a mock of the pinned state, one test per case, including the
//! datapath racing a pass between its walk and its deletions.

use std::cell::RefCell;
use std::collections::HashMap;

use super::*;

/// A map in insertion order, walked in chunks of `CHUNK`; `race` runs once, right before the
/// first re-read of a key, as the datapath would between the walk and the
/// deletion; `race_delete` runs once, right before the first deletion, as the datapath would
/// after a re-read.
type Race<K, V> = Box<dyn FnOnce(&mut Vec<(K, V)>)>;

struct Mock<K, V> {
    rows: RefCell<Vec<(K, V)>>,
    race: RefCell<Option<Race<K, V>>>,
    race_delete: RefCell<Option<Race<K, V>>>,
}

const CHUNK: usize = 2;

impl<K: Copy + PartialEq, V: Copy> Mock<K, V> {
    fn new(rows: Vec<(K, V)>) -> Self {
        Self { rows: RefCell::new(rows), race: RefCell::new(None), race_delete: RefCell::new(None) }
    }
    fn get(&self, k: &K) -> Option<V> {
        self.rows.borrow().iter().find(|(a, _)| a == k).map(|(_, v)| *v)
    }
    fn len(&self) -> usize {
        self.rows.borrow().len()
    }
}

impl<K: Copy + PartialEq, V: Copy> Table<K, V> for Mock<K, V> {
    fn walk(&self, f: &mut ChunkFn<'_, K, V>) -> Result<usize, GcError> {
        let mut i = 0;
        let mut seen = 0;
        loop {
            let chunk: Vec<(K, V)> = self.rows.borrow().iter().skip(i).take(CHUNK).copied().collect();
            if chunk.is_empty() {
                return Ok(seen);
            }
            seen += chunk.len();
            let (k, v): (Vec<K>, Vec<V>) = chunk.iter().copied().unzip();
            let before = self.rows.borrow().len();
            f(Cursor::from_raw(i as u64), &k, &v)?;
            // Deletions shift what follows, as a bucket cursor would not: step by what remains.
            let after = self.rows.borrow().len();
            i = (i + CHUNK).saturating_sub(before - after);
        }
    }
    fn delete(&self, keys: &[K]) -> Result<usize, GcError> {
        if let Some(race) = self.race_delete.borrow_mut().take() {
            race(&mut self.rows.borrow_mut());
        }
        let mut rows = self.rows.borrow_mut();
        let n = rows.len();
        rows.retain(|(k, _)| !keys.contains(k));
        Ok(n - rows.len())
    }
    fn take(&self, k: &K) -> Result<Option<V>, GcError> {
        if let Some(race) = self.race_delete.borrow_mut().take() {
            race(&mut self.rows.borrow_mut());
        }
        // As the kernel's lookup-and-delete: the value as the deletion found it.
        let mut rows = self.rows.borrow_mut();
        Ok(rows.iter().position(|(a, _)| a == k).map(|i| rows.remove(i).1))
    }
    fn get(&self, k: &K) -> Result<Option<V>, GcError> {
        if let Some(race) = self.race.borrow_mut().take() {
            race(&mut self.rows.borrow_mut());
        }
        Ok(Mock::get(self, k))
    }
    fn insert_new(&self, k: &K, v: &V) -> Result<bool, GcError> {
        if Mock::get(self, k).is_some() {
            return Ok(false);
        }
        self.rows.borrow_mut().push((*k, *v));
        Ok(true)
    }
}

struct State {
    ct4: Mock<Flow4, Ct4>,
    maps: Mock<Endpoint4, Mapping4>,
    claims: Mock<Claim4, Endpoint4>,
    frags: Mock<FragKey4, FragVal4>,
    pods: Vec<(u32, Pod)>,
    freed: RefCell<HashMap<u32, PodUsage>>,
    room: usize,
}

impl NatState for State {
    fn ct4(&self) -> &dyn Table<Flow4, Ct4> {
        &self.ct4
    }
    fn nat4_map(&self) -> &dyn Table<Endpoint4, Mapping4> {
        &self.maps
    }
    fn nat4_claim(&self) -> &dyn Table<Claim4, Endpoint4> {
        &self.claims
    }
    fn frag4(&self) -> &dyn Table<FragKey4, FragVal4> {
        &self.frags
    }
    fn pods(&self) -> Result<Vec<(u32, Pod)>, GcError> {
        Ok(self.pods.clone())
    }
    fn pods_v4(&self) -> Result<Vec<([u8; 4], u32)>, GcError> {
        Ok(self.pods.iter().map(|(i, p)| (p.ipv4, *i)).collect())
    }
    fn credit(&self, id: u32, f: PodUsage) -> Result<(), GcError> {
        let mut m = self.freed.borrow_mut();
        let e = m.entry(id).or_default();
        e.mappings += f.mappings;
        e.flows4 += f.flows4;
        Ok(())
    }
    fn eif(&self) -> bool {
        false
    }
    fn mapping_room(&self) -> usize {
        self.room
    }
}

const S: u64 = 1_000_000_000;
const NOW: u64 = 100_000 * S;
const POD_A: [u8; 4] = [169, 254, 1, 2];
const POD_B: [u8; 4] = [169, 254, 1, 3];
const REMOTE: [u8; 4] = [203, 0, 113, 9];
const IF_A: u32 = 7;
const IF_B: u32 = 8;
const UDP: u8 = 17;

fn pod(id: u32, ipv4: [u8; 4]) -> Pod {
    // SAFETY: Pod is plain old data, all zeroes valid.
    let mut p: Pod = unsafe { std::mem::zeroed() };
    p.id = id;
    p.ipv4 = ipv4;
    p
}

fn ep(addr: [u8; 4], port: u16) -> Endpoint4 {
    Endpoint4 { addr, port, proto: UDP, _pad: 0 }
}

fn flow(addr: [u8; 4], port: u16, rport: u16) -> Flow4 {
    Flow4 { pod_addr: addr, remote_addr: REMOTE, pod_port: port, remote_port: rport, proto: UDP, _pad: [0; 3] }
}

fn ct(ext: u16, ifindex: u32, idle_secs: u64) -> Ct4 {
    Ct4 { ext_port: ext, pod_ifindex: ifindex, last_seen_ns: NOW - idle_secs * S, ..Default::default() }
}

fn mapping(ext: u16, ifindex: u32, idle_secs: u64) -> Mapping4 {
    Mapping4 { ext_port: ext, _pad: 0, pod_ifindex: ifindex, created_ns: 0, last_seen_ns: NOW - idle_secs * S }
}

fn claim(ext: u16) -> Claim4 {
    Claim4 { remote: REMOTE, ext_port: ext, proto: UDP, _pad: 0 }
}

fn state(flows: Vec<(Flow4, Ct4)>, maps: Vec<(Endpoint4, Mapping4)>, claims: Vec<(Claim4, Endpoint4)>) -> State {
    State {
        ct4: Mock::new(flows),
        maps: Mock::new(maps),
        claims: Mock::new(claims),
        frags: Mock::new(vec![]),
        pods: vec![(IF_A, pod(1, POD_A)), (IF_B, pod(2, POD_B))],
        freed: RefCell::default(),
        room: 1000,
    }
}

fn freed(s: &State, id: u32) -> PodUsage {
    s.freed.borrow().get(&id).copied().unwrap_or_default()
}

const IDLE: u64 = 3600; // past every UDP timeout
const FRESH: u64 = 1;

#[test]
fn an_expired_flow_goes_and_credits_its_pod_a_live_one_stays() {
    let s = state(
        vec![(flow(POD_A, 1000, 53), ct(40000, IF_A, IDLE)), (flow(POD_A, 1000, 54), ct(40000, IF_A, FRESH))],
        vec![(ep(POD_A, 1000), mapping(40000, IF_A, FRESH))],
        vec![(claim(40000), ep(POD_A, 1000))],
    );
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!((r.flows_seen, r.flows_expired), (2, 1));
    assert!(s.ct4.get(&flow(POD_A, 1000, 54)).is_some());
    assert!(s.ct4.get(&flow(POD_A, 1000, 53)).is_none());
    // The live flow still uses the claim (same remote and port).
    assert!(s.claims.get(&claim(40000)).is_some());
    assert_eq!(freed(&s, 1), PodUsage { flows4: 1, ..Default::default() });
    assert_eq!(freed(&s, 2), PodUsage::default());
}

#[test]
fn a_flow_refreshed_between_the_walk_and_its_deletion_is_kept_with_its_mapping_and_claim() {
    let f = flow(POD_A, 1000, 53);
    let s = state(
        vec![(f, ct(40000, IF_A, IDLE))],
        vec![(ep(POD_A, 1000), mapping(40000, IF_A, IDLE))],
        vec![(claim(40000), ep(POD_A, 1000))],
    );
    *s.ct4.race.borrow_mut() = Some(Box::new(move |rows: &mut Vec<(Flow4, Ct4)>| rows[0].1.last_seen_ns = NOW));
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.flows_expired, 0);
    assert!(s.ct4.get(&f).is_some());
    // The refreshed flow counts as live: its mapping and claim stay.
    assert_eq!(r.mappings_expired, 0);
    assert!(s.maps.get(&ep(POD_A, 1000)).is_some());
    assert!(s.claims.get(&claim(40000)).is_some());
    assert_eq!(freed(&s, 1), PodUsage::default());
}

#[test]
fn a_flow_refreshed_after_a_neighbours_deletion_is_kept() {
    // Two expired flows in one chunk; the second is refreshed while the first is being deleted,
    // after any re-read of the whole chunk: only a re-read of the key itself sees it.
    let (a, b) = (flow(POD_A, 1000, 53), flow(POD_A, 1000, 54));
    let s = state(
        vec![(a, ct(40000, IF_A, IDLE)), (b, ct(40000, IF_A, IDLE))],
        vec![(ep(POD_A, 1000), mapping(40000, IF_A, FRESH))],
        vec![(claim(40000), ep(POD_A, 1000))],
    );
    *s.ct4.race_delete.borrow_mut() = Some(Box::new(move |rows: &mut Vec<(Flow4, Ct4)>| {
        rows.iter_mut().filter(|(k, _)| *k == b).for_each(|(_, v)| v.last_seen_ns = NOW)
    }));
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.flows_expired, 1);
    assert!(s.ct4.get(&a).is_none());
    assert!(s.ct4.get(&b).is_some());
    assert!(s.claims.get(&claim(40000)).is_some());
    assert_eq!(freed(&s, 1), PodUsage { flows4: 1, ..Default::default() });
}

#[test]
fn a_flow_refreshed_between_its_re_read_and_its_deletion_is_put_back() {
    // The refresh lands after the key's own re-read: the deletion returns it, and the flow goes
    // back uncredited, with its mapping and claim.
    let f = flow(POD_A, 1000, 53);
    let s = state(
        vec![(f, ct(40000, IF_A, IDLE))],
        vec![(ep(POD_A, 1000), mapping(40000, IF_A, FRESH))],
        vec![(claim(40000), ep(POD_A, 1000))],
    );
    *s.ct4.race_delete.borrow_mut() = Some(Box::new(move |rows: &mut Vec<(Flow4, Ct4)>| rows[0].1.last_seen_ns = NOW));
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.flows_expired, 0);
    assert_eq!(s.ct4.get(&f).map(|c| c.last_seen_ns), Some(NOW));
    assert!(s.claims.get(&claim(40000)).is_some());
    assert_eq!(freed(&s, 1), PodUsage::default());
}

#[test]
fn an_idle_mapping_without_flows_goes_with_every_claim_and_credits_once() {
    let e = ep(POD_B, 2000);
    let zero = Claim4 { remote: [0; 4], ..claim(41000) };
    let s = state(vec![], vec![(e, mapping(41000, IF_B, IDLE))], vec![(claim(41000), e), (zero, e)]);
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.mappings_expired, 1);
    assert_eq!(r.claims_removed, 2);
    assert_eq!((s.maps.len(), s.claims.len()), (0, 0));
    assert_eq!(freed(&s, 2), PodUsage { mappings: 1, ..Default::default() });
    assert_eq!(r.evicted_mappings_lost, 0);
}

#[test]
fn an_idle_mapping_under_a_live_flow_stays() {
    let e = ep(POD_A, 1000);
    let s = state(vec![(flow(POD_A, 1000, 53), ct(40000, IF_A, FRESH))], vec![(e, mapping(40000, IF_A, IDLE))], vec![(claim(40000), e)]);
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.mappings_expired, 0);
    assert!(s.maps.get(&e).is_some());
    assert_eq!(freed(&s, 1), PodUsage::default());
}

#[test]
fn a_mapping_refreshed_between_the_walk_and_its_deletion_is_kept_with_its_claims() {
    let e = ep(POD_B, 2000);
    let s = state(vec![], vec![(e, mapping(41000, IF_B, IDLE))], vec![(claim(41000), e)]);
    *s.maps.race.borrow_mut() = Some(Box::new(|rows: &mut Vec<(Endpoint4, Mapping4)>| rows[0].1.last_seen_ns = NOW));
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.mappings_expired, 0);
    assert!(s.maps.get(&e).is_some());
    assert!(s.claims.get(&claim(41000)).is_some());
    assert_eq!(freed(&s, 2), PodUsage::default());
}

#[test]
fn a_claim_whose_owner_changed_before_its_deletion_is_kept() {
    let e = ep(POD_B, 2000);
    let other = ep(POD_A, 1000);
    let s = state(vec![], vec![(e, mapping(41000, IF_B, IDLE)), (other, mapping(41000, IF_A, FRESH))], vec![(claim(41000), e)]);
    *s.claims.race.borrow_mut() = Some(Box::new(move |rows: &mut Vec<(Claim4, Endpoint4)>| rows[0].1 = other));
    pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(s.claims.get(&claim(41000)), Some(other));
}

#[test]
fn a_live_flow_whose_mapping_and_claim_were_evicted_gets_both_back_uncredited() {
    let e = ep(POD_A, 1000);
    let s = state(vec![(flow(POD_A, 1000, 53), ct(40000, IF_A, FRESH))], vec![], vec![]);
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!((r.evicted_mappings_restored, r.evicted_claims_restored), (1, 1));
    assert_eq!(s.maps.get(&e).map(|m| (m.ext_port, m.pod_ifindex)), Some((40000, IF_A)));
    assert_eq!(s.claims.get(&claim(40000)), Some(e));
    assert_eq!(freed(&s, 1), PodUsage::default());
}

#[test]
fn a_restored_mapping_is_credited_once_when_it_finally_expires() {
    let e = ep(POD_A, 1000);
    let s = state(vec![(flow(POD_A, 1000, 53), ct(40000, IF_A, FRESH))], vec![], vec![]);
    pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    // A day later: the flow and the restored mapping expire.
    let later = NOW + 86_400 * S;
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, later).unwrap();
    assert_eq!((r.flows_expired, r.mappings_expired, r.evicted_mappings_lost), (1, 1, 0));
    assert_eq!(freed(&s, 1), PodUsage { mappings: 1, flows4: 1, flows6: 0 });
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, later).unwrap();
    assert_eq!(r.evictions(), 0);
    assert_eq!(freed(&s, 1), PodUsage { mappings: 1, flows4: 1, flows6: 0 });
    assert!(s.maps.get(&e).is_none());
}

#[test]
fn an_orphan_claim_is_removed_and_its_lost_mapping_credited_once() {
    let e = ep(POD_B, 2000);
    let zero = Claim4 { remote: [0; 4], ..claim(41000) };
    let s = state(vec![], vec![], vec![(claim(41000), e), (zero, e)]);
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!((r.orphan_claims_removed, r.evicted_mappings_lost), (2, 1));
    assert_eq!(s.claims.len(), 0);
    assert_eq!(freed(&s, 2), PodUsage { mappings: 1, ..Default::default() });
}

#[test]
fn flows_ending_after_their_mapping_was_evicted_credit_the_lost_mapping() {
    let e = ep(POD_B, 2000);
    let s = state(vec![(flow(POD_B, 2000, 53), ct(41000, IF_B, IDLE))], vec![], vec![(claim(41000), e)]);
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!((r.flows_expired, r.evicted_mappings_lost, r.evicted_mappings_restored), (1, 1, 0));
    assert_eq!(s.claims.len(), 0);
    assert_eq!(freed(&s, 2), PodUsage { mappings: 1, flows4: 1, flows6: 0 });
}

#[test]
fn a_claim_whose_mapping_appeared_after_the_walk_is_no_orphan() {
    let e = ep(POD_B, 2000);
    let s = state(vec![], vec![], vec![(claim(41000), e)]);
    // The program claimed the port, then inserted the mapping after nat4_map's walk.
    s.maps.insert_new(&e, &mapping(41000, IF_B, FRESH)).unwrap();
    let st = Lagging { s: &s, maps: LaggingMaps(&s.maps) };
    let r = pass(&st, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.orphan_claims_removed, 0);
    assert_eq!(s.claims.get(&claim(41000)), Some(e));
    assert_eq!(freed(&s, 2), PodUsage::default());
}

/// A state whose nat4_map walks empty while `get` sees its entries: a mapping inserted after
/// the walk read its bucket.
struct Lagging<'a> {
    s: &'a State,
    maps: LaggingMaps<'a>,
}
struct LaggingMaps<'a>(&'a Mock<Endpoint4, Mapping4>);

impl Table<Endpoint4, Mapping4> for LaggingMaps<'_> {
    fn walk(&self, _: &mut ChunkFn<'_, Endpoint4, Mapping4>) -> Result<usize, GcError> {
        Ok(0)
    }
    fn delete(&self, k: &[Endpoint4]) -> Result<usize, GcError> {
        self.0.delete(k)
    }
    fn get(&self, k: &Endpoint4) -> Result<Option<Mapping4>, GcError> {
        Ok(self.0.get(k))
    }
    fn insert_new(&self, k: &Endpoint4, v: &Mapping4) -> Result<bool, GcError> {
        self.0.insert_new(k, v)
    }
}

impl NatState for Lagging<'_> {
    fn ct4(&self) -> &dyn Table<Flow4, Ct4> {
        &self.s.ct4
    }
    fn nat4_map(&self) -> &dyn Table<Endpoint4, Mapping4> {
        &self.maps
    }
    fn nat4_claim(&self) -> &dyn Table<Claim4, Endpoint4> {
        &self.s.claims
    }
    fn frag4(&self) -> &dyn Table<FragKey4, FragVal4> {
        &self.s.frags
    }
    fn pods(&self) -> Result<Vec<(u32, Pod)>, GcError> {
        self.s.pods()
    }
    fn pods_v4(&self) -> Result<Vec<([u8; 4], u32)>, GcError> {
        self.s.pods_v4()
    }
    fn credit(&self, id: u32, f: PodUsage) -> Result<(), GcError> {
        self.s.credit(id, f)
    }
    fn eif(&self) -> bool {
        false
    }
    fn mapping_room(&self) -> usize {
        self.s.room
    }
}

#[test]
fn an_evicted_mapping_above_the_high_water_mark_is_left_pending() {
    let s = State { room: 0, ..state(vec![(flow(POD_A, 1000, 53), ct(40000, IF_A, FRESH))], vec![], vec![]) };
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!((r.evicted_mappings_pending, r.evicted_mappings_restored), (1, 0));
    assert_eq!(s.maps.len(), 0);
    assert_eq!(freed(&s, 1), PodUsage::default());
}

#[test]
fn a_dead_flows_claim_goes_unless_another_live_flow_uses_it() {
    let e = ep(POD_A, 1000);
    let other = Claim4 { ext_port: 40001, ..claim(40000) };
    let s = state(
        vec![
            (flow(POD_A, 1000, 53), ct(40000, IF_A, IDLE)),
            (flow(POD_A, 1000, 54), ct(40000, IF_A, FRESH)),
            (flow(POD_A, 1000, 55), ct(40001, IF_A, IDLE)),
        ],
        vec![(e, mapping(40000, IF_A, FRESH))],
        vec![(claim(40000), e), (other, e)],
    );
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!((r.flows_expired, r.claims_removed), (2, 1));
    assert!(s.claims.get(&claim(40000)).is_some());
    assert!(s.claims.get(&other).is_none());
}

#[test]
fn a_flow_of_a_pod_removed_meanwhile_gets_nothing_back() {
    let s = State { pods: vec![], ..state(vec![(flow(POD_A, 1000, 53), ct(40000, IF_A, FRESH))], vec![], vec![]) };
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.evictions(), 0);
    assert_eq!((s.maps.len(), s.claims.len()), (0, 0));
}

#[test]
fn stale_fragment_records_go_fresh_ones_stay() {
    let mut s = state(vec![], vec![], vec![]);
    let k = |id| FragKey4 { id, ..Default::default() };
    s.frags = Mock::new(vec![
        (k(1), FragVal4 { seen_ns: NOW - 60 * S, ..Default::default() }),
        (k(2), FragVal4 { seen_ns: NOW, ..Default::default() }),
    ]);
    let r = pass(&s, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.frags_expired, 1);
    assert!(s.frags.get(&k(2)).is_some());
}

#[test]
fn passes_come_sooner_as_occupancy_grows() {
    use std::time::Duration;
    let base = Duration::from_secs(10);
    assert_eq!(next_interval(base, 0.0, 0.9), base);
    assert_eq!(next_interval(base, 0.25, 0.9), base);
    let half = next_interval(base, 0.575, 0.9);
    assert!(half > Duration::from_secs(5) && half < Duration::from_secs(6), "{half:?}");
    assert!(next_interval(base, 0.8, 0.9) < half);
    assert_eq!(next_interval(base, 0.9, 0.9), Duration::from_secs(1));
    assert_eq!(next_interval(base, 1.0, 0.9), Duration::from_secs(1));
    // A base below the floor is kept.
    assert_eq!(next_interval(Duration::from_millis(500), 1.0, 0.9), Duration::from_millis(500));
}

#[test]
fn a_dead_flows_claim_stays_when_the_flow_came_back_before_the_claim_walk() {
    let e = ep(POD_A, 1000);
    let f = flow(POD_A, 1000, 53);
    let s = state(vec![(f, ct(40000, IF_A, IDLE))], vec![(e, mapping(40000, IF_A, FRESH))], vec![(claim(40000), e)]);
    // The pod sends again right after the ct4 chunk's deletion: the program re-creates the flow
    // on the same claim before the claim walk.
    let ct4 = &s.ct4;
    let st = Recreating { s: &s, flow: (f, ct(40000, IF_A, FRESH)), ct4 };
    let r = pass(&st, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.flows_expired, 1);
    assert_eq!(r.claims_removed, 0);
    assert_eq!(s.claims.get(&claim(40000)), Some(e));
}

/// A ct4 whose deletions are followed at once by the datapath re-creating one flow.
struct Recreating<'a> {
    s: &'a State,
    flow: (Flow4, Ct4),
    ct4: &'a Mock<Flow4, Ct4>,
}

impl Table<Flow4, Ct4> for Recreating<'_> {
    fn walk(&self, f: &mut ChunkFn<'_, Flow4, Ct4>) -> Result<usize, GcError> {
        self.ct4.walk(f)
    }
    fn delete(&self, k: &[Flow4]) -> Result<usize, GcError> {
        let n = self.ct4.delete(k)?;
        self.ct4.insert_new(&self.flow.0, &self.flow.1)?;
        Ok(n)
    }
    fn get(&self, k: &Flow4) -> Result<Option<Ct4>, GcError> {
        Ok(self.ct4.get(k))
    }
    fn insert_new(&self, k: &Flow4, v: &Ct4) -> Result<bool, GcError> {
        self.ct4.insert_new(k, v)
    }
}

impl NatState for Recreating<'_> {
    fn ct4(&self) -> &dyn Table<Flow4, Ct4> {
        self
    }
    fn nat4_map(&self) -> &dyn Table<Endpoint4, Mapping4> {
        &self.s.maps
    }
    fn nat4_claim(&self) -> &dyn Table<Claim4, Endpoint4> {
        &self.s.claims
    }
    fn frag4(&self) -> &dyn Table<FragKey4, FragVal4> {
        &self.s.frags
    }
    fn pods(&self) -> Result<Vec<(u32, Pod)>, GcError> {
        self.s.pods()
    }
    fn pods_v4(&self) -> Result<Vec<([u8; 4], u32)>, GcError> {
        self.s.pods_v4()
    }
    fn credit(&self, id: u32, f: PodUsage) -> Result<(), GcError> {
        self.s.credit(id, f)
    }
    fn eif(&self) -> bool {
        false
    }
    fn mapping_room(&self) -> usize {
        self.s.room
    }
}

#[test]
fn the_claim_of_a_mapping_re_created_during_the_pass_stays_the_old_ports_goes() {
    // The endpoint's mapping expires in this pass; the pod then sends again, and the programs
    // claim port 42000 and map it, after the pass re-walked nat4_map but before its claim walk.
    let e = ep(POD_B, 2000);
    let new = Claim4 { ext_port: 42000, ..claim(41000) };
    let s = state(vec![], vec![(e, mapping(41000, IF_B, IDLE))], vec![(claim(41000), e), (new, e)]);
    let st = Remapping { s: &s, ep: e, mapping: mapping(42000, IF_B, FRESH), done: RefCell::new(false) };
    let r = pass(&st, &Timeouts::default(), crate::config::DEFAULT_UNANSWERED_SECS, NOW).unwrap();
    assert_eq!(r.mappings_expired, 1);
    assert_eq!(s.claims.get(&new), Some(e));
    assert_eq!(s.claims.get(&claim(41000)), None);
    assert_eq!(r.claims_removed, 1);
}

/// A claim table whose first re-read comes after the programs re-created `ep`'s mapping.
struct Remapping<'a> {
    s: &'a State,
    ep: Endpoint4,
    mapping: Mapping4,
    done: RefCell<bool>,
}

impl Table<Claim4, Endpoint4> for Remapping<'_> {
    fn walk(&self, f: &mut ChunkFn<'_, Claim4, Endpoint4>) -> Result<usize, GcError> {
        self.s.claims.walk(f)
    }
    fn delete(&self, k: &[Claim4]) -> Result<usize, GcError> {
        self.s.claims.delete(k)
    }
    fn get(&self, k: &Claim4) -> Result<Option<Endpoint4>, GcError> {
        if !self.done.replace(true) {
            self.s.maps.insert_new(&self.ep, &self.mapping)?;
        }
        Ok(self.s.claims.get(k))
    }
    fn insert_new(&self, k: &Claim4, v: &Endpoint4) -> Result<bool, GcError> {
        self.s.claims.insert_new(k, v)
    }
}

impl NatState for Remapping<'_> {
    fn ct4(&self) -> &dyn Table<Flow4, Ct4> {
        &self.s.ct4
    }
    fn nat4_map(&self) -> &dyn Table<Endpoint4, Mapping4> {
        &self.s.maps
    }
    fn nat4_claim(&self) -> &dyn Table<Claim4, Endpoint4> {
        self
    }
    fn frag4(&self) -> &dyn Table<FragKey4, FragVal4> {
        &self.s.frags
    }
    fn pods(&self) -> Result<Vec<(u32, Pod)>, GcError> {
        self.s.pods()
    }
    fn pods_v4(&self) -> Result<Vec<([u8; 4], u32)>, GcError> {
        self.s.pods_v4()
    }
    fn credit(&self, id: u32, f: PodUsage) -> Result<(), GcError> {
        self.s.credit(id, f)
    }
    fn eif(&self) -> bool {
        false
    }
    fn mapping_room(&self) -> usize {
        self.s.room
    }
}
