//! `ARCHIVE.json`, the record of what an archive holds, and the keys of
//! its objects.

use serde::{Deserialize, Serialize};
use strata::log::segment::parse_segment_file_name;

use crate::{ArchiveError, Target};

/// Key of the record of what the archive holds.
pub const MANIFEST_KEY: &str = "ARCHIVE.json";
/// The archive layout this code writes and reads (docs/FORMAT.md §13).
pub const ARCHIVE_FORMAT: u32 = 1;
/// Most bytes of one chunk of a segment: more new bytes become several
/// chunks (a sealed segment up to [`WHOLE_BYTES_MAX`] is one object).
pub const CHUNK_BYTES_MAX: u64 = 64 << 20;
/// A sealed segment archived in several chunks is uploaded again whole
/// (and its chunks deleted) when it is at most this long: one object per
/// sealed segment keeps listings and restores short.
pub const WHOLE_BYTES_MAX: u64 = 256 << 20;
/// Largest `ARCHIVE.json` read: a manifest lists one entry per segment.
pub const MANIFEST_BYTES_MAX: usize = 64 << 20;

/// The record of what an archive holds (`ARCHIVE.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`ARCHIVE_FORMAT`].
    pub format: u32,
    /// The store's id (in every segment header), as a UUID string.
    pub store_id: String,
    /// The log's generation (docs/FORMAT.md §1, `GENERATION`): objects of
    /// this generation are under `log/<generation>/`.
    pub generation: u64,
    /// Every position up to this one is in the archive.
    pub head: u64,
    /// The archived segments, in position order.
    pub segments: Vec<SegmentEntry>,
    /// When this record was written, Unix milliseconds.
    pub updated_unix_ms: u64,
}

/// One archived segment file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// The segment's file name (`<20 digits>.seg`).
    pub name: String,
    /// Bytes `0..len` of the file are archived.
    pub len: u64,
    /// The segment is sealed and `len` is its whole length.
    pub sealed: bool,
    /// `Some(crc)`: the bytes are one object, [`segment_key`], whose
    /// CRC-32 is `crc`. `None`: they are chunks, [`chunk_key`], each
    /// naming its byte range and CRC-32.
    pub whole_crc32: Option<u32>,
}

impl Manifest {
    pub fn new(store_id: String, generation: u64) -> Manifest {
        Manifest {
            format: ARCHIVE_FORMAT,
            store_id,
            generation,
            head: 0,
            segments: Vec::new(),
            updated_unix_ms: 0,
        }
    }

    /// Reads the manifest of `target`, `None` if it has none.
    pub fn load(target: &dyn Target) -> Result<Option<Manifest>, ArchiveError> {
        let Some(bytes) = target
            .get(MANIFEST_KEY)
            .map_err(ArchiveError::target(target, "reading ARCHIVE.json"))?
        else {
            return Ok(None);
        };
        let bad = |detail: String| ArchiveError::Manifest {
            url: target.url().to_owned(),
            detail,
        };
        if bytes.len() > MANIFEST_BYTES_MAX {
            return Err(bad(format!(
                "it is {} bytes, more than the {MANIFEST_BYTES_MAX} a manifest may have",
                bytes.len()
            )));
        }
        // The format first, so that a newer layout says so rather than
        // failing on a field it renamed.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if head.format != ARCHIVE_FORMAT {
            return Err(ArchiveError::Format {
                url: target.url().to_owned(),
                found: head.format,
            });
        }
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        m.check().map_err(bad)?;
        Ok(Some(m))
    }

    /// Writes the manifest (one put: whole or not at all).
    pub fn save(&mut self, target: &dyn Target) -> Result<(), ArchiveError> {
        self.updated_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let bytes = serde_json::to_vec_pretty(self).expect("a manifest serializes");
        target
            .put(MANIFEST_KEY, &bytes)
            .map_err(ArchiveError::target(target, "writing ARCHIVE.json"))
    }

    /// What a reader relies on: segment names that are segment names, in
    /// increasing order, and only the last one unsealed.
    fn check(&self) -> Result<(), String> {
        let mut last = 0;
        for (i, s) in self.segments.iter().enumerate() {
            let first = parse_segment_file_name(&s.name)
                .ok_or_else(|| format!("{:?} is not a segment file name", s.name))?;
            if first <= last {
                return Err(format!("segment {} is out of order", s.name));
            }
            last = first;
            if !s.sealed && i + 1 != self.segments.len() {
                return Err(format!("segment {} is unsealed but not the last", s.name));
            }
        }
        Ok(())
    }

    pub fn entry_mut(&mut self, name: &str) -> Option<&mut SegmentEntry> {
        self.segments.iter_mut().find(|s| s.name == name)
    }
}

/// Key of a segment archived whole: `log/<generation>/<name>`.
pub fn segment_key(generation: u64, name: &str) -> String {
    format!("log/{generation}/{name}")
}

/// Key of a chunk holding bytes `start..end` of segment `name`, whose
/// CRC-32 is `crc`: `log/<generation>/<name>.<start>-<end>.<crc as 8 hex>`
/// with `start` and `end` as 20 decimal digits, so that keys sort by
/// offset.
pub fn chunk_key(generation: u64, name: &str, start: u64, end: u64, crc: u32) -> String {
    format!("log/{generation}/{name}.{start:020}-{end:020}.{crc:08x}")
}

/// The `(start, end, crc)` of a chunk key of segment `name`.
pub fn parse_chunk_key(key: &str, name: &str) -> Option<(u64, u64, u32)> {
    let file = key.rsplit('/').next()?;
    let rest = file.strip_prefix(name)?.strip_prefix('.')?;
    let (range, crc) = rest.split_once('.')?;
    let (start, end) = range.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(start) || !digits(end) || crc.len() != 8 {
        return None;
    }
    let (start, end) = (start.parse().ok()?, end.parse().ok()?);
    (start < end).then_some(())?;
    Some((start, end, u32::from_str_radix(crc, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_round_trip_and_sort_by_offset() {
        let name = "00000000000000000001.seg";
        let k = chunk_key(3, name, 48, 4096, 0xdead_beef);
        assert_eq!(
            k,
            "log/3/00000000000000000001.seg.00000000000000000048-00000000000000004096.deadbeef"
        );
        assert_eq!(parse_chunk_key(&k, name), Some((48, 4096, 0xdead_beef)));
        assert!(chunk_key(0, name, 9, 10, 0) < chunk_key(0, name, 10, 11, 0));
        for bad in [
            "log/0/00000000000000000001.seg",
            "log/0/00000000000000000001.seg.1-2.00000000",
            "log/0/00000000000000000001.seg.00000000000000000002-00000000000000000001.00000000",
            "log/0/00000000000000000001.seg.00000000000000000001-00000000000000000002.xyz",
            "log/0/00000000000000000002.seg.00000000000000000001-00000000000000000002.00000000",
        ] {
            assert_eq!(parse_chunk_key(bad, name), None, "{bad}");
        }
    }

    #[test]
    fn a_manifest_from_a_newer_strata_or_out_of_order_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let t = crate::target::LocalDir::new(dir.path().to_path_buf(), "test");
        assert_eq!(Manifest::load(&t).unwrap(), None);
        let mut m = Manifest::new("id".into(), 0);
        m.segments = vec![
            SegmentEntry {
                name: "00000000000000000001.seg".into(),
                len: 100,
                sealed: true,
                whole_crc32: Some(1),
            },
            SegmentEntry {
                name: "00000000000000000010.seg".into(),
                len: 48,
                sealed: false,
                whole_crc32: None,
            },
        ];
        m.save(&t).unwrap();
        assert_eq!(Manifest::load(&t).unwrap().unwrap().segments, m.segments);

        t.put(MANIFEST_KEY, br#"{"format": 2, "renamed": true}"#)
            .unwrap();
        let e = Manifest::load(&t).unwrap_err().to_string();
        assert!(e.contains("format 2") && e.contains("upgrade"), "{e}");

        m.segments.swap(0, 1);
        m.save(&t).unwrap();
        let e = Manifest::load(&t).unwrap_err().to_string();
        assert!(e.contains("unsealed but not the last"), "{e}");
        m.segments[0].sealed = true;
        m.save(&t).unwrap();
        let e = Manifest::load(&t).unwrap_err().to_string();
        assert!(e.contains("out of order"), "{e}");

        t.put(MANIFEST_KEY, b"{not json").unwrap();
        let e = Manifest::load(&t).unwrap_err().to_string();
        assert!(e.contains("ARCHIVE.json cannot be read"), "{e}");
    }
}
