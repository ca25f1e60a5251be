//! One segment file: naming, and read access (memory map once sealed,
//! positioned reads while active).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use memmap2::Mmap;

use super::vfs::{VfsFile, read_exact_at};

/// File name suffix of a segment.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of a segment being created; such a file is never read and is
/// removed by the next writer that opens the store.
pub const SEGMENT_TMP_SUFFIX: &str = ".seg.tmp";
/// Digits of the first position in a segment file name.
pub const SEGMENT_NAME_DIGITS: usize = 20;

/// `00000000000000000001.seg` for a segment starting at position 1.
pub fn segment_file_name(first_position: u64) -> String {
    format!("{first_position:0SEGMENT_NAME_DIGITS$}{SEGMENT_SUFFIX}")
}

/// The first position encoded in a segment file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&p| p > 0)
}

/// A segment file shared by the writer and any number of readers.
#[derive(Debug)]
pub struct Segment {
    first_position: u64,
    path: PathBuf,
    file: Arc<dyn VfsFile>,
    /// Bytes readers may look at. Grows as batches become visible; covers
    /// the whole file once sealed.
    readable_len: AtomicU64,
    /// Position of the last event readers may see in this segment, or
    /// `first_position - 1` when none.
    last_position: AtomicU64,
    sealed: AtomicBool,
    /// Length to map an active segment at: its size limit, so that one map
    /// serves it while it grows.
    map_len_hint: u64,
    map: OnceLock<Option<Mmap>>,
}

impl Segment {
    /// A sealed segment: `len` bytes, all readable, up to `last_position`;
    /// mapped at its length.
    pub fn sealed(
        first_position: u64,
        path: PathBuf,
        file: Arc<dyn VfsFile>,
        len: u64,
        last_position: u64,
    ) -> Segment {
        Segment::new(first_position, path, file, len, last_position, true, 0)
    }

    /// The active segment: readable up to `readable_len` bytes and
    /// `last_position` (`first_position - 1`: no event yet), growing as
    /// batches become visible; mapped at `map_len` (its size limit), so
    /// that one map serves it while it grows.
    pub fn active(
        first_position: u64,
        path: PathBuf,
        file: Arc<dyn VfsFile>,
        readable_len: u64,
        last_position: u64,
        map_len: u64,
    ) -> Segment {
        Segment::new(
            first_position,
            path,
            file,
            readable_len,
            last_position,
            false,
            map_len,
        )
    }

    fn new(
        first_position: u64,
        path: PathBuf,
        file: Arc<dyn VfsFile>,
        readable_len: u64,
        last_position: u64,
        sealed: bool,
        map_len_hint: u64,
    ) -> Segment {
        debug_assert!(last_position + 1 >= first_position);
        Segment {
            first_position,
            path,
            file,
            readable_len: AtomicU64::new(readable_len),
            last_position: AtomicU64::new(last_position),
            sealed: AtomicBool::new(sealed),
            map_len_hint,
            map: OnceLock::new(),
        }
    }

    pub fn first_position(&self) -> u64 {
        self.first_position
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &Arc<dyn VfsFile> {
        &self.file
    }

    pub fn readable_len(&self) -> u64 {
        self.readable_len.load(Ordering::Acquire)
    }

    pub fn last_position(&self) -> u64 {
        self.last_position.load(Ordering::Acquire)
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Makes more of the segment visible to readers. Never shrinks.
    pub fn publish(&self, readable_len: u64, last_position: u64) {
        self.readable_len.fetch_max(readable_len, Ordering::AcqRel);
        self.last_position
            .fetch_max(last_position, Ordering::AcqRel);
    }

    pub fn mark_sealed(&self, file_len: u64) {
        self.readable_len.fetch_max(file_len, Ordering::AcqRel);
        self.sealed.store(true, Ordering::Release);
    }

    /// A new map of this segment, long enough for everything it can
    /// hold; `None` when it cannot be mapped.
    pub fn map_new(&self) -> Option<Mmap> {
        let file_len = self.file.len().ok()?;
        let len = if self.is_sealed() {
            file_len
        } else {
            file_len.max(self.map_len_hint)
        };
        // A failed map (address space exhausted, a file system without
        // mmap) is not an error: reads fall back to positioned reads.
        self.file.map(len).ok().flatten()
    }

    /// The shared map of this segment used by point reads, made on first use.
    pub fn mapped_bytes(&self) -> Option<&Mmap> {
        self.map.get_or_init(|| self.map_new()).as_ref()
    }

    /// Bytes `[offset, offset + len)`: borrowed from the segment's map when
    /// they lie below the readable end, or read into `buf`.
    pub fn read<'a>(
        &'a self,
        offset: u64,
        len: usize,
        buf: &'a mut Vec<u8>,
    ) -> io::Result<&'a [u8]> {
        let end = offset
            .checked_add(len as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
        // Through the map only below the readable end: an active segment's
        // map reaches past the end of its file, and touching such a page
        // would be a SIGBUS rather than an error. Elsewhere a positioned
        // read fails cleanly at the end of the file.
        if end <= self.readable_len()
            && let Some(bytes) = self
                .mapped_bytes()
                .and_then(|m| m.get(offset as usize..end as usize))
        {
            return Ok(bytes);
        }
        buf.clear();
        buf.resize(len, 0);
        read_exact_at(&*self.file, buf, offset)?;
        Ok(&buf[..])
    }

    /// Like [`Segment::read`] but returns fewer bytes at the end of the file.
    pub fn read_upto<'a>(
        &'a self,
        offset: u64,
        len: usize,
        buf: &'a mut Vec<u8>,
    ) -> io::Result<&'a [u8]> {
        if self.is_sealed()
            && let Some(map) = self.mapped_bytes()
        {
            let start = (offset as usize).min(map.len());
            let end = start.saturating_add(len).min(map.len());
            return Ok(&map[start..end]);
        }
        buf.clear();
        buf.resize(len, 0);
        let mut filled = 0;
        while filled < len {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(&buf[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_like_positions_and_round_trip() {
        assert_eq!(segment_file_name(1), "00000000000000000001.seg");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(12345)),
            Some(12345)
        );
        assert!(segment_file_name(9) < segment_file_name(10));
        for bad in [
            "1.seg",
            "0000000000000000000a.seg",
            "00000000000000000000.seg",
            "00000000000000000001.seg.tmp",
            "x",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }
}
