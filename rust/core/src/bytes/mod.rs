//! Byte-level decoding: the token trie of a vocabulary ([`trie`]), canonicality of token pairs
//! from BPE merge ranks ([`canon`]), the vocabulary-wide index of masks and canonical checks
//! ([`index`]) and the cover encodings of a byte prefix ([`cover`]).

pub mod canon;
pub mod cover;
pub mod index;
pub mod trie;
