//! `TokenRecycler::from_bytes` (what `TokenRecycler.load` parses) on hostile files: raw bytes,
//! and a valid magic and version followed by fuzzed sizes and body, so the size and length
//! checks are reached. Never a panic, never an allocation beyond the caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenloom_core::spec::recycling::{TokenRecycler, FORMAT_VERSION, MAGIC};
use tokenloom_core::spec::template::Template;

fn check(bytes: &[u8]) {
    if let Ok(rec) = TokenRecycler::from_bytes(bytes, None, None) {
        assert_eq!(rec.to_bytes(), bytes, "a parsed file writes back unchanged");
        assert!(rec.adjacency().iter().all(|&v| (v as usize) < rec.vocab()));
        let t = Template::from_paths(&[vec![0], vec![0, 0]]).unwrap();
        if rec.k() >= 1 {
            let d = rec.draft(0, &t).unwrap();
            assert!(d.tokens.iter().all(|&x| (x as usize) < rec.vocab()));
        }
        assert!(TokenRecycler::from_bytes(bytes, Some(rec.vocab() + 1), None).is_err());
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= 12 {
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        // vocab: u64, k: u32 from the fuzz data (often small: the top bytes masked).
        let mut vocab = u64::from_le_bytes(data[..8].try_into().unwrap());
        let mut k = u32::from_le_bytes(data[8..12].try_into().unwrap());
        if data[0] & 1 == 0 {
            vocab &= 0xff;
            k &= 0xf;
        }
        file.extend_from_slice(&vocab.to_le_bytes());
        file.extend_from_slice(&k.to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(&data[12..]);
        check(&file);
    }
});
