//! The orphan-fragment slow path seen from the test side: switching it on in a test's maps and
//! reading back what the programs handed to the (absent) daemon.
use aya::maps::{Array, HashMap, RingBuf};
use podgate_common::{
    frag::{PUNT_ORPHAN, PUNT_RELEASE, PuntHdr, map_names},
    nat::FragKey4,
    node_flags,
};

use crate::fixture::{Config, Env};

/// One `frag4_punt` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An orphan: its header and the IPv4 packet bytes.
    Orphan(PuntHdr, Vec<u8>),
    Release(PuntHdr),
}

/// `CLOCK_BOOTTIME`, the clock of `bpf_ktime_get_boot_ns`.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An environment with `FRAG_PUNT` set and a daemon that is alive for another minute.
pub fn env_with_punt() -> Env {
    let mut env = Env::with(Config { flags: node_flags::FRAG_PUNT, ..Default::default() });
    set_alive(&mut env, boottime_ns() + 60_000_000_000);
    env
}

/// Writes the daemon's liveness deadline (boot ns).
pub fn set_alive(env: &mut Env, until_ns: u64) {
    let mut a: Array<_, u64> = Array::try_from(env.h.ebpf.map_mut(map_names::FRAG4_PUNT_ALIVE).unwrap()).unwrap();
    a.set(0, until_ns, 0).unwrap();
}

/// Drains the ring: every record written since the last call.
pub fn records(env: &mut Env) -> Vec<Record> {
    let mut rb = RingBuf::try_from(env.h.ebpf.map_mut(map_names::FRAG4_PUNT).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        assert!(item.len() >= size_of::<PuntHdr>(), "short record: {} bytes", item.len());
        // SAFETY: the programs write a PuntHdr first; read unaligned from the ring.
        let h: PuntHdr = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const PuntHdr) };
        let data = item[size_of::<PuntHdr>()..].to_vec();
        out.push(match h.kind {
            PUNT_ORPHAN => {
                assert_eq!(data.len(), h.len as usize, "record length vs its header");
                Record::Orphan(h, data)
            }
            PUNT_RELEASE => {
                assert!(data.is_empty() && h.len == 0, "release with data");
                Record::Release(h)
            }
            k => panic!("unknown record kind {k}"),
        });
    }
    out
}

/// Keys in `frag4_pending`.
pub fn pending(env: &Env) -> Vec<FragKey4> {
    let m: HashMap<_, FragKey4, u64> = HashMap::try_from(env.h.ebpf.map(map_names::FRAG4_PENDING).unwrap()).unwrap();
    m.keys().map(|k| k.unwrap()).collect()
}
