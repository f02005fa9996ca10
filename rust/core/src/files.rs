//! State files of the core's tables (the recycler matrix, the token-frequency table): written
//! through a temporary file and a rename, so a reader never sees half a file; read header first.

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{CoreError, Result};

/// Writes `bytes` to `path` through a temporary file beside it, synced, then renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |e: std::io::Error| CoreError::Io(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp-tokenloom");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Opens `path` and reads at most its first `header_len` bytes: `(file, header, file length)`,
/// the file positioned after the header.
pub fn open_with_header(path: &Path, header_len: usize) -> Result<(std::fs::File, Vec<u8>, u64)> {
    let io = |e: std::io::Error| CoreError::Io(format!("cannot read {}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut header = Vec::with_capacity(header_len);
    (&mut f)
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    Ok((f, header, len))
}
