//! Token counts of a reference corpus and the Laplace-smoothed token-frequency distribution
//! DC-PDD (arXiv 2409.14781) calibrates with: `f(v) = (count(v) + 1) / (total + vocab)`.
//!
//! * [`TokenCounts::add`] counts a document's ids (optionally only its first `max_per_doc`
//!   tokens, as the paper's reference counts the first 1024 of each C4 document);
//! * [`TokenCounts::save`] / [`TokenCounts::load`]: a small little-endian binary format, see
//!   [`MAGIC`]; the header is checked (magic, version, sizes, the stored total equal to the sum
//!   of the counts) before anything is trusted, and a CRC-32 of the whole file (version 2, the
//!   one written) catches a flipped bit in any field, the document count included.

use std::io::Read;
use std::path::Path;

use crate::error::{check_index, CoreError, Result};
use crate::files::{crc32, open_with_header, write_atomic};
use crate::limits::{check_size, try_filled, MAX_VOCAB};

/// File magic of saved counts (8 bytes), followed by `version: u32`, `reserved: u32` (0),
/// `vocab: u64`, `total: u64`, `docs: u64`, then `vocab` little-endian u64 counts and, from
/// version 2 on, `crc32: u32`: the CRC-32 (zlib's) of every byte before it.
pub const MAGIC: &[u8; 8] = b"TLTOKFRQ";
/// Version of the file format written (version 1 files, without the CRC-32, are still read).
pub const FORMAT_VERSION: u32 = 2;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 8;
const CRC_LEN: usize = 4;

/// What a file header says: sizes and whether a CRC-32 follows the counts.
struct Header {
    vocab: usize,
    total: u64,
    docs: u64,
    crc: bool,
}

impl Header {
    /// Bytes after the header: the counts and the CRC-32 (if any).
    fn body_len(&self) -> u64 {
        self.vocab as u64 * 8 + if self.crc { CRC_LEN as u64 } else { 0 }
    }
}

/// Counts of every token id in `[0, vocab)` over a corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCounts {
    counts: Vec<u64>,
    total: u64,
    docs: u64,
}

impl TokenCounts {
    /// Zero counts for `vocab` ids (`1 <= vocab <= `[`MAX_VOCAB`]).
    pub fn new(vocab: usize) -> Result<Self> {
        let vocab = check_size("vocab_size", vocab as u64, MAX_VOCAB)?;
        Ok(TokenCounts { counts: try_filled("token counts", vocab, 0u64)?, total: 0, docs: 0 })
    }

    /// Number of ids.
    pub fn vocab(&self) -> usize {
        self.counts.len()
    }

    /// Tokens counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Documents counted (calls of [`add`](Self::add)).
    pub fn docs(&self) -> u64 {
        self.docs
    }

    /// The raw counts.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Counts one document's ids (the first `max_per_doc` when given). All ids are checked
    /// before any is counted, so an error leaves the table unchanged.
    pub fn add(&mut self, ids: &[i64], max_per_doc: Option<usize>) -> Result<()> {
        let n = max_per_doc.map_or(ids.len(), |m| m.min(ids.len()));
        let ids = &ids[..n];
        for &t in ids {
            check_index("ids", t, self.counts.len())?;
        }
        for &t in ids {
            self.counts[t as usize] += 1;
        }
        self.total += n as u64;
        self.docs += 1;
        Ok(())
    }

    /// Adds another table of the same vocabulary (counts, totals and documents).
    pub fn merge(&mut self, other: &TokenCounts) -> Result<()> {
        if other.vocab() != self.vocab() {
            return Err(CoreError::shape("other", format!("vocab {}", self.vocab()), format!("vocab {}", other.vocab())));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.docs += other.docs;
        Ok(())
    }

    /// The Laplace-smoothed distribution `(count + 1) / (total + vocab)` (sums to 1).
    pub fn smoothed(&self) -> Vec<f64> {
        let denom = self.total as f64 + self.counts.len() as f64;
        self.counts.iter().map(|&c| (c as f64 + 1.0) / denom).collect()
    }

    /// Serialises the table (header, counts, CRC-32; little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.counts.len() * 8 + CRC_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(self.counts.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.total.to_le_bytes());
        out.extend_from_slice(&self.docs.to_le_bytes());
        for &c in &self.counts {
            out.extend_from_slice(&c.to_le_bytes());
        }
        let crc = crc32(&[&out]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses [`to_bytes`](Self::to_bytes) output; `expect_vocab` (when given) must match.
    pub fn from_bytes(bytes: &[u8], expect_vocab: Option<usize>) -> Result<Self> {
        let header = bytes.get(..HEADER_LEN).unwrap_or(bytes);
        let h = parse_header(header, expect_vocab)?;
        from_body(header, &bytes[header.len()..], &h)
    }

    /// Writes the table to `path` (through a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes())
    }

    /// Reads a table written by [`save`](Self::save); the header and the file length are
    /// checked before the counts are read.
    pub fn load(path: &Path, expect_vocab: Option<usize>) -> Result<Self> {
        let (mut f, header, got) = open_with_header(path, HEADER_LEN)?;
        let h = parse_header(&header, expect_vocab)?;
        let want = HEADER_LEN as u64 + h.body_len();
        if got != want {
            return Err(CoreError::value(format!(
                "token-frequency file is truncated or padded: expected {want} bytes, got {got}"
            )));
        }
        let mut body = try_filled("token-frequency file", h.body_len() as usize, 0u8)?;
        f.read_exact(&mut body)
            .map_err(|e| CoreError::Io(format!("cannot read {}: {e}", path.display())))?;
        from_body(&header, &body, &h)
    }
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(v)
}

/// Checks a header (version 1 or 2).
fn parse_header(header: &[u8], expect_vocab: Option<usize>) -> Result<Header> {
    if header.len() < HEADER_LEN || &header[..8] != MAGIC {
        return Err(CoreError::value("not a tokenloom token-frequency file (bad magic)"));
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != 1 && version != FORMAT_VERSION {
        return Err(CoreError::value(format!(
            "token-frequency file format version {version} is not supported (expected 1 or {FORMAT_VERSION})"
        )));
    }
    let reserved = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if reserved != 0 {
        return Err(CoreError::value(format!("token-frequency file header: expected reserved = 0, got {reserved}")));
    }
    let vocab = u64_at(header, 16);
    let vocab = check_size("token-frequency file vocab", vocab, MAX_VOCAB)?;
    if let Some(want) = expect_vocab {
        if want != vocab {
            return Err(CoreError::value(format!(
                "token-frequency file vocab mismatch: expected {want}, file has {vocab}"
            )));
        }
    }
    Ok(Header { vocab, total: u64_at(header, 24), docs: u64_at(header, 32), crc: version >= 2 })
}

/// The table of a checked `header` and the bytes after it: the CRC-32 (version 2) is checked
/// before the counts are read.
fn from_body(header: &[u8], body: &[u8], h: &Header) -> Result<TokenCounts> {
    let Header { vocab, total, docs, .. } = *h;
    if body.len() as u64 != h.body_len() {
        return Err(CoreError::value(format!(
            "token-frequency file is truncated or padded: expected {} bytes, got {}",
            HEADER_LEN as u64 + h.body_len(),
            HEADER_LEN + body.len()
        )));
    }
    let counts_bytes = &body[..vocab * 8];
    if h.crc {
        let c = &body[vocab * 8..];
        let stored = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let actual = crc32(&[header, counts_bytes]);
        if stored != actual {
            return Err(CoreError::value(format!(
                "token-frequency file is corrupt: CRC-32 mismatch (stored {stored:#010x}, computed {actual:#010x})"
            )));
        }
    }
    let mut counts = try_filled("token counts", vocab, 0u64)?;
    let mut sum: u64 = 0;
    for (i, c) in counts_bytes.chunks_exact(8).enumerate() {
        counts[i] = u64_at(c, 0);
        sum = sum.checked_add(counts[i]).ok_or_else(|| CoreError::value("token-frequency file is corrupt: counts overflow"))?;
    }
    if sum != total {
        return Err(CoreError::value(format!(
            "token-frequency file is corrupt: header total {total} != sum of counts {sum}"
        )));
    }
    Ok(TokenCounts { counts, total, docs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_smoothing() {
        let mut t = TokenCounts::new(4).unwrap();
        t.add(&[0, 1, 1, 3], None).unwrap();
        t.add(&[2, 2, 2, 2], Some(2)).unwrap();
        assert_eq!(t.counts(), &[1, 2, 2, 1]);
        assert_eq!((t.total(), t.docs()), (6, 2));
        let f = t.smoothed();
        assert!((f.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((f[1] - 3.0 / 10.0).abs() < 1e-15);
    }

    #[test]
    fn bad_ids_leave_the_table_unchanged() {
        let mut t = TokenCounts::new(3).unwrap();
        assert!(matches!(t.add(&[0, 3], None), Err(CoreError::Index { .. })));
        assert!(t.add(&[-1], None).is_err());
        assert_eq!((t.total(), t.docs(), t.counts()), (0, 0, &[0u64, 0, 0][..]));
        assert!(TokenCounts::new(0).is_err());
    }

    #[test]
    fn bytes_round_trip_and_corruption() {
        let mut t = TokenCounts::new(5).unwrap();
        t.add(&[4, 4, 0], None).unwrap();
        let b = t.to_bytes();
        assert_eq!(TokenCounts::from_bytes(&b, Some(5)).unwrap(), t);
        assert!(TokenCounts::from_bytes(&b, Some(6)).is_err());
        assert!(TokenCounts::from_bytes(&b[..b.len() - 1], None).is_err());
        assert!(TokenCounts::from_bytes(&b[..10], None).is_err());
        let mut bad = b.clone();
        bad[0] = b'X';
        assert!(TokenCounts::from_bytes(&bad, None).is_err());
        let mut bad = b.clone();
        bad[8] = 3; // version
        assert!(TokenCounts::from_bytes(&bad, None).is_err());
        let mut bad = b.clone();
        bad[HEADER_LEN] = 9; // a count no longer matching the total
        assert!(TokenCounts::from_bytes(&bad, None).is_err());
        // Any flipped bit, the document count's included, fails the CRC-32.
        for byte in 0..b.len() {
            let mut bad = b.clone();
            bad[byte] ^= 1 << (byte % 8);
            assert!(TokenCounts::from_bytes(&bad, None).is_err(), "byte {byte}");
        }
        let mut bad = b.clone();
        bad[32] ^= 1; // docs
        let err = TokenCounts::from_bytes(&bad, None).unwrap_err().to_string();
        assert!(err.contains("CRC-32 mismatch"), "{err}");
        let mut other = TokenCounts::new(5).unwrap();
        other.merge(&t).unwrap();
        other.merge(&t).unwrap();
        assert_eq!((other.total(), other.counts()[4]), (6, 4));
        assert!(other.merge(&TokenCounts::new(4).unwrap()).is_err());
    }

    #[test]
    fn version_1_files_are_still_read() {
        let mut t = TokenCounts::new(3).unwrap();
        t.add(&[2, 2, 1], None).unwrap();
        let mut v1 = t.to_bytes();
        v1.truncate(v1.len() - CRC_LEN);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(TokenCounts::from_bytes(&v1, Some(3)).unwrap(), t);
        let mut v3 = t.to_bytes();
        v3[8..12].copy_from_slice(&3u32.to_le_bytes());
        let err = TokenCounts::from_bytes(&v3, None).unwrap_err().to_string();
        assert!(err.contains("version 3 is not supported"), "{err}");
    }

    #[test]
    fn file_round_trip() {
        let dir = std::env::temp_dir().join(format!("tl-freq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.tlfreq");
        let mut t = TokenCounts::new(7).unwrap();
        t.add(&[1, 2, 3, 1], None).unwrap();
        t.save(&path).unwrap();
        assert_eq!(TokenCounts::load(&path, None).unwrap(), t);
        assert!(TokenCounts::load(&path, Some(8)).is_err());
        assert!(TokenCounts::load(&dir.join("missing"), None).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
