//! The batched bpf(2) map commands (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`) and the
//! single-key ones the GC re-reads with: the only place podgate issues raw map syscalls (aya 0.14
//! has no batch API, aya-rs/aya#1124).
//!
//! Kernel semantics this module hides (kernel/bpf/hashtab.c, `__htab_map_lookup_and_delete_batch`):
//! - a hash map is walked bucket by bucket; the cursor (`in_batch`/`out_batch`) is a bucket index,
//!   so a chunk never splits a bucket, and entries added or removed during a walk are seen at
//!   most once (a walk is not a snapshot);
//! - `ENOENT` ends the walk and may still carry the last entries in `count`;
//! - `ENOSPC` means one bucket holds more entries than the buffer: nothing was copied and the
//!   same cursor is retried with a larger buffer;
//! - LRU hash maps are read without setting the entries' reference bit, so a GC walk does not
//!   make idle entries look recently used to the LRU;
//! - `BPF_MAP_DELETE_BATCH` stops at the first key that is already gone (`ENOENT`) with `count`
//!   saying how many went before it: the caller skips that key and goes on.

use std::{
    marker::PhantomData,
    mem::{MaybeUninit, size_of},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `flags` of an update: only if absent (the datapath's newer entry wins).
pub const BPF_NOEXIST: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("opening pinned map {path}: {source}")]
    Open { path: String, source: aya::maps::MapError },
    #[error("map {path}: key/value size {have:?} in the kernel, {want:?} in podgate's ABI")]
    Size { path: String, have: (u32, u32), want: (u32, u32) },
    #[error("bpf({cmd}) on a map: {source}")]
    Syscall { cmd: &'static str, source: std::io::Error },
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> Result<(), std::io::Error> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size passed; the pointers
    // inside it point at buffers the caller keeps alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Plain-old-data map keys and values: `#[repr(C)]`, no padding the kernel could not write, any
/// bit pattern valid (the `podgate_common` ABI types).
///
/// # Safety
/// Implementors must be valid for any bit pattern of their size.
pub unsafe trait Plain: Copy + 'static {}
// SAFETY: the ABI types are #[repr(C)] integers and byte arrays, valid for any bit pattern.
unsafe impl<T: aya::Pod> Plain for T {}

/// A hash map read and written by batches; keys and values typed by podgate's ABI, checked against
/// the kernel's sizes when the handle is made.
pub struct BatchMap<K, V> {
    fd: OwnedFd,
    /// Entries per `LOOKUP_BATCH` call (grown on `ENOSPC`).
    chunk: u32,
    _t: PhantomData<(K, V)>,
}

/// Entries per batch call: large enough that the per-call cost vanishes, small enough that a
/// chunk's re-read comes right before its deletion.
pub const DEFAULT_CHUNK: u32 = 4096;

impl<K: Plain, V: Plain> BatchMap<K, V> {
    pub fn from_pin(path: &Path) -> Result<Self, BatchError> {
        let p = || path.display().to_string();
        let data = aya::maps::MapData::from_pin(path).map_err(|source| BatchError::Open { path: p(), source })?;
        let info = data.info().map_err(|source| BatchError::Open { path: p(), source })?;
        let want = (size_of::<K>() as u32, size_of::<V>() as u32);
        let have = (info.key_size(), info.value_size());
        if have != want {
            return Err(BatchError::Size { path: p(), have, want });
        }
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|source| BatchError::Syscall { cmd: "dup", source })?;
        Ok(Self::from_fd(fd))
    }

    /// A handle over a map fd whose key and value sizes the caller knows to be `K` and `V`.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd, chunk: DEFAULT_CHUNK, _t: PhantomData }
    }

    pub fn with_chunk(mut self, chunk: u32) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Walks the map in chunks; `f` gets each chunk and the cursor that re-reads it
    /// ([`Self::reread`]). Returns the number of entries walked.
    pub fn for_each_chunk(
        &self,
        mut f: impl FnMut(&Self, Cursor, &[K], &[V]) -> Result<(), BatchError>,
    ) -> Result<usize, BatchError> {
        let mut chunk = self.chunk;
        let mut keys: Vec<K> = Vec::new();
        let mut vals: Vec<V> = Vec::new();
        let mut at = Cursor::START;
        let mut total = 0;
        loop {
            match self.read_at(at, chunk, &mut keys, &mut vals) {
                Ok(next) => {
                    let next = next?;
                    total += keys.len();
                    if !keys.is_empty() {
                        f(self, at, &keys, &vals)?;
                    }
                    match next {
                        Some(n) => at = n,
                        None => return Ok(total),
                    }
                }
                Err(Grow) => chunk = chunk.saturating_mul(2),
            }
        }
    }

    /// Reads the chunk that starts at `at` again (its buckets as they are now), up to `max`
    /// entries, into `keys`/`vals`.
    pub fn reread(&self, at: Cursor, max: usize, keys: &mut Vec<K>, vals: &mut Vec<V>) -> Result<(), BatchError> {
        let mut n = (max as u32).max(self.chunk);
        loop {
            match self.read_at(at, n, keys, vals) {
                Ok(r) => return r.map(|_| ()),
                Err(Grow) => n = n.saturating_mul(2),
            }
        }
    }

    /// One `LOOKUP_BATCH` call; `Ok(None)` at the end of the map.
    #[allow(clippy::type_complexity)]
    fn read_at(&self, at: Cursor, n: u32, keys: &mut Vec<K>, vals: &mut Vec<V>) -> Result<Result<Option<Cursor>, BatchError>, Grow> {
        keys.clear();
        vals.clear();
        keys.reserve(n as usize);
        vals.reserve(n as usize);
        let mut out = 0u64;
        let mut attr = BatchAttr {
            in_batch: at.0.as_ref().map_or(0, |c| c as *const u64 as u64),
            out_batch: &mut out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: vals.as_mut_ptr() as u64,
            count: n,
            map_fd: self.fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = attr.count.min(n) as usize;
        let end = match r {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Err(Grow),
            Err(source) => return Ok(Err(BatchError::Syscall { cmd: "BPF_MAP_LOOKUP_BATCH", source })),
        };
        // SAFETY: the kernel wrote `got` (≤ capacity) keys and values; both are `Plain`.
        unsafe {
            keys.set_len(got);
            vals.set_len(got);
        }
        Ok(Ok(if end { None } else { Some(Cursor(Some(out))) }))
    }

    /// All entries (one walk in chunks).
    pub fn entries(&self) -> Result<Vec<(K, V)>, BatchError> {
        let mut all = Vec::new();
        self.for_each_chunk(|_, _, k, v| {
            all.extend(k.iter().copied().zip(v.iter().copied()));
            Ok(())
        })?;
        Ok(all)
    }

    /// Deletes `keys` in batches; keys already gone are skipped. Returns how many were deleted.
    pub fn delete(&self, keys: &[K]) -> Result<usize, BatchError> {
        let mut done = 0;
        let mut rest = keys;
        while !rest.is_empty() {
            let n = rest.len().min(u32::MAX as usize) as u32;
            let mut attr = BatchAttr {
                keys: rest.as_ptr() as u64,
                count: n,
                map_fd: self.fd.as_raw_fd() as u32,
                ..Default::default()
            };
            let r = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
            let went = (attr.count.min(n)) as usize;
            done += went;
            match r {
                Ok(()) => rest = &rest[went..],
                // `rest[went]` was already gone: skip it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[(went + 1).min(rest.len())..],
                Err(source) => return Err(BatchError::Syscall { cmd: "BPF_MAP_DELETE_BATCH", source }),
            }
        }
        Ok(done)
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, BatchError> {
        self.read_elem(key, BPF_MAP_LOOKUP_ELEM, "BPF_MAP_LOOKUP_ELEM")
    }

    /// One element read by `cmd` (a lookup, or a lookup that also deletes); `None` when absent.
    fn read_elem(&self, key: &K, cmd: libc::c_long, name: &'static str) -> Result<Option<V>, BatchError> {
        let mut v = MaybeUninit::<V>::uninit();
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key as *const K as u64,
            value: v.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(cmd, &mut attr) {
            // SAFETY: the kernel filled the value; `V` is `Plain`.
            Ok(()) => Ok(Some(unsafe { v.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(source) => Err(BatchError::Syscall { cmd: name, source }),
        }
    }

    /// Inserts or replaces (`flags` 0) or inserts only if absent ([`BPF_NOEXIST`]); `Ok(false)`
    /// when NOEXIST found an entry.
    pub fn insert(&self, key: &K, value: &V, flags: u64) -> Result<bool, BatchError> {
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key as *const K as u64,
            value: value as *const V as u64,
            flags,
            ..Default::default()
        };
        match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) || e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(BatchError::Syscall { cmd: "BPF_MAP_UPDATE_ELEM", source }),
        }
    }

    /// Deletes `key` and returns its value as the deletion found it (`None` when it was gone):
    /// one bucket-locked step, so a write that landed before it is in the value returned.
    pub fn take(&self, key: &K) -> Result<Option<V>, BatchError> {
        self.read_elem(key, BPF_MAP_LOOKUP_AND_DELETE_ELEM, "BPF_MAP_LOOKUP_AND_DELETE_ELEM")
    }

    /// `Ok(false)` when the key was already gone.
    pub fn remove(&self, key: &K) -> Result<bool, BatchError> {
        let mut attr = ElemAttr { map_fd: self.fd.as_raw_fd() as u32, key: key as *const K as u64, ..Default::default() };
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(BatchError::Syscall { cmd: "BPF_MAP_DELETE_ELEM", source }),
        }
    }
}

/// Where a chunk of a walk starts (the kernel's bucket cursor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor(Option<u64>);

impl Cursor {
    pub const START: Cursor = Cursor(None);

    /// A cursor of a map that is not the kernel's (a test double's own position).
    pub const fn from_raw(at: u64) -> Cursor {
        Cursor(Some(at))
    }

    pub const fn raw(self) -> Option<u64> {
        self.0
    }
}

/// `ENOSPC`: a bucket did not fit the buffer.
struct Grow;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }

    /// A private map (not pinned, gone with its fd).
    fn map(kind: u32, max: u32) -> BatchMap<u32, u64> {
        let mut attr = CreateAttr { map_type: kind, key_size: 4, value_size: 8, max_entries: max, map_flags: 0 };
        // SAFETY: valid attr of the size passed.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &mut attr as *mut CreateAttr, size_of::<CreateAttr>() as u32) };
        assert!(fd >= 0, "BPF_MAP_CREATE: {} (these tests need root)", std::io::Error::last_os_error());
        // SAFETY: a fresh fd we own.
        BatchMap::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    fn fill(m: &BatchMap<u32, u64>, n: u32) {
        for k in 0..n {
            assert!(m.insert(&k, &(u64::from(k) * 3), 0).unwrap());
        }
    }

    #[test]
    fn a_walk_returns_every_entry_once_across_chunks_and_the_enoent_tail() {
        for kind in [BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH] {
            let m = map(kind, 20_000).with_chunk(1000);
            fill(&m, 10_007);
            let mut got = m.entries().unwrap();
            got.sort();
            assert_eq!(got.len(), 10_007, "map type {kind}");
            for (i, (k, v)) in got.iter().enumerate() {
                assert_eq!((*k, *v), (i as u32, i as u64 * 3));
            }
        }
    }

    #[test]
    fn an_empty_map_walks_to_nothing() {
        let m = map(BPF_MAP_TYPE_HASH, 16);
        assert_eq!(m.entries().unwrap(), vec![]);
    }

    #[test]
    fn a_chunk_of_one_grows_on_enospc_instead_of_failing_or_skipping() {
        // 64 buckets' worth of 2,000 keys: buckets hold several entries, which do not fit one
        // slot (ENOSPC) and must be read with a grown buffer.
        let m = map(BPF_MAP_TYPE_HASH, 2000).with_chunk(1);
        fill(&m, 2000);
        let mut got: Vec<u32> = m.entries().unwrap().into_iter().map(|(k, _)| k).collect();
        got.sort();
        assert_eq!(got, (0..2000).collect::<Vec<_>>());
    }

    #[test]
    fn delete_skips_keys_already_gone_and_counts_the_rest() {
        let m = map(BPF_MAP_TYPE_LRU_HASH, 1000);
        fill(&m, 100);
        assert!(m.remove(&5).unwrap());
        let keys: Vec<u32> = (0..10).collect();
        assert_eq!(m.delete(&keys).unwrap(), 9);
        assert_eq!(m.entries().unwrap().len(), 90);
        assert_eq!(m.delete(&keys).unwrap(), 0);
        assert_eq!(m.get(&10).unwrap(), Some(30));
        assert_eq!(m.get(&3).unwrap(), None);
    }

    #[test]
    fn take_returns_the_value_it_deleted_and_none_when_gone() {
        let m = map(BPF_MAP_TYPE_LRU_HASH, 1000);
        fill(&m, 10);
        assert_eq!(m.take(&4).unwrap(), Some(12));
        assert_eq!(m.get(&4).unwrap(), None);
        assert_eq!(m.take(&4).unwrap(), None);
        assert_eq!(m.entries().unwrap().len(), 9);
    }

    #[test]
    fn a_reread_sees_the_chunk_as_it_is_now() {
        let m = map(BPF_MAP_TYPE_HASH, 4096).with_chunk(64);
        fill(&m, 1000);
        let mut first = None;
        m.for_each_chunk(|_, at, k, _| {
            first.get_or_insert((at, k.to_vec()));
            Ok(())
        })
        .unwrap();
        let (at, keys) = first.unwrap();
        assert!(m.insert(&keys[0], &7, 0).unwrap());
        assert!(m.remove(&keys[1]).unwrap());
        let (mut k2, mut v2) = (Vec::new(), Vec::new());
        m.reread(at, keys.len(), &mut k2, &mut v2).unwrap();
        let now: std::collections::HashMap<u32, u64> = k2.into_iter().zip(v2).collect();
        assert_eq!(now.get(&keys[0]), Some(&7));
        assert_eq!(now.get(&keys[1]), None);
        assert_eq!(now.get(&keys[2]), Some(&(u64::from(keys[2]) * 3)));
    }

    #[test]
    fn noexist_keeps_the_present_entry() {
        let m = map(BPF_MAP_TYPE_HASH, 16);
        assert!(m.insert(&1, &1, BPF_NOEXIST).unwrap());
        assert!(!m.insert(&1, &2, BPF_NOEXIST).unwrap());
        assert_eq!(m.get(&1).unwrap(), Some(1));
    }
}
