//! State files of the core's tables (the recycler matrix, the token-frequency table): written
//! through a temporary file and a rename, so a reader never sees half a file; read header first,
//! from regular files only (a named pipe, a device or a folder is refused before any read, so a
//! load never blocks); a CRC-32 for the formats that carry one.

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

/// Opens `path` for reading without blocking (a named pipe with no writer would block a plain
/// open forever) and refuses anything but a regular file.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    let io = |e: std::io::Error| CoreError::Io(format!("cannot read {}: {e}", path.display()));
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let f = opts.open(path).map_err(io)?;
    let kind = f.metadata().map_err(io)?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() { "a folder" } else { "not a regular file (a named pipe, socket or device)" };
        return Err(CoreError::Io(format!("cannot read {}: expected a regular file, got {what}", path.display())));
    }
    Ok(f)
}

/// Opens the regular file `path` and reads at most its first `header_len` bytes: `(file,
/// header, file length)`, the file positioned after the header.
pub fn open_with_header(path: &Path, header_len: usize) -> Result<(std::fs::File, Vec<u8>, u64)> {
    let io = |e: std::io::Error| CoreError::Io(format!("cannot read {}: {e}", path.display()));
    let mut f = open_regular(path)?;
    let mut header = Vec::with_capacity(header_len);
    (&mut f)
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    Ok((f, header, len))
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, as zlib's `crc32`) of `parts` read one after the other: detects every
/// error of up to 32 consecutive bits.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for part in parts {
        for &b in *part {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[]), 0);
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = std::env::temp_dir().join(format!("tl-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = open_with_header(&dir, 8).unwrap_err().to_string();
        assert!(err.contains("expected a regular file"), "{err}");
        let file = dir.join("f.bin");
        std::fs::write(&file, b"abcdef").unwrap();
        let (_, header, len) = open_with_header(&file, 4).unwrap();
        assert_eq!((header.as_slice(), len), (&b"abcd"[..], 6));
        #[cfg(unix)]
        {
            let fifo = dir.join("pipe");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            let err = open_with_header(&fifo, 8).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
