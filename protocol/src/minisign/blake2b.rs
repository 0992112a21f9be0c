//! BLAKE2b (RFC 7693), unkeyed, with an output of 1 to 64 bytes, fed in chunks.
//!
//! Owns: the hash minisign uses for prehashed signatures (BLAKE2b-512 of the file) and for
//! its secret key checksum (BLAKE2b-256). Written for size rather than speed: the rounds
//! are a loop over tables, which the agent's size profile keeps small (a few hundred bytes
//! of code), and it still hashes tens of MB/s on a small ARM core.
//! Must not: take keys or salts (nothing here needs them), allocate or do I/O.

/// The initialisation vector (the SHA-512 IV).
const IV: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

/// The message word permutations; rounds 10 and 11 reuse the first two.
const SIGMA: [[u8; 16]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

/// The working vector indices each G call mixes: four columns, then four diagonals.
const LANES: [[u8; 4]; 8] = [
    [0, 4, 8, 12],
    [1, 5, 9, 13],
    [2, 6, 10, 14],
    [3, 7, 11, 15],
    [0, 5, 10, 15],
    [1, 6, 11, 12],
    [2, 7, 8, 13],
    [3, 4, 9, 14],
];

const BLOCK: usize = 128;

/// A BLAKE2b state producing `N` bytes (1 to 64; other values do not compile).
///
/// ```
/// # use protocol::minisign::Blake2b;
/// let mut h = Blake2b::<64>::new();
/// h.update(b"a");
/// h.update(b"bc");
/// assert_eq!(h.finalize()[..4], [0xba, 0x80, 0xa5, 0x3f]);
/// ```
#[derive(Clone)]
pub struct Blake2b<const N: usize> {
    h: [u64; 8],
    /// Bytes compressed so far (messages up to 2^64 - 1 bytes).
    t: u64,
    buf: [u8; BLOCK],
    /// Bytes waiting in `buf`; a full block stays here until more data shows it is not last.
    len: usize,
}

impl<const N: usize> Default for Blake2b<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Blake2b<N> {
    pub fn new() -> Self {
        const { assert!(N >= 1 && N <= 64, "BLAKE2b outputs 1 to 64 bytes") };
        let mut h = IV;
        // Parameter block: digest length, no key, fanout 1, depth 1.
        h[0] ^= 0x0101_0000 ^ N as u64;
        Blake2b {
            h,
            t: 0,
            buf: [0; BLOCK],
            len: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.len == BLOCK {
                self.t = self.t.wrapping_add(BLOCK as u64);
                compress(&mut self.h, &self.buf, self.t, false);
                self.len = 0;
            }
            let n = (BLOCK - self.len).min(data.len());
            self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
        }
    }

    pub fn finalize(mut self) -> [u8; N] {
        self.t = self.t.wrapping_add(self.len as u64);
        self.buf[self.len..].fill(0);
        compress(&mut self.h, &self.buf, self.t, true);
        let mut out = [0u8; N];
        for (i, b) in out.iter_mut().enumerate() {
            *b = (self.h[i / 8] >> (8 * (i % 8))) as u8;
        }
        out
    }
}

/// One-shot BLAKE2b of `data`.
pub fn blake2b<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut h = Blake2b::<N>::new();
    h.update(data);
    h.finalize()
}

fn compress(h: &mut [u64; 8], block: &[u8; BLOCK], t: u64, last: bool) {
    let mut m = [0u64; 16];
    for (w, c) in m.iter_mut().zip(block.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        *w = u64::from_le_bytes(b);
    }
    let mut v = [0u64; 16];
    v[..8].copy_from_slice(h);
    v[8..].copy_from_slice(&IV);
    v[12] ^= t;
    if last {
        v[14] = !v[14];
    }
    for round in 0..12 {
        let s = &SIGMA[round % 10];
        for (i, &[a, b, c, d]) in LANES.iter().enumerate() {
            let (x, y) = (m[s[2 * i] as usize], m[s[2 * i + 1] as usize]);
            let (a, b, c, d) = (a as usize, b as usize, c as usize, d as usize);
            v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
            v[d] = (v[d] ^ v[a]).rotate_right(32);
            v[c] = v[c].wrapping_add(v[d]);
            v[b] = (v[b] ^ v[c]).rotate_right(24);
            v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
            v[d] = (v[d] ^ v[a]).rotate_right(16);
            v[c] = v[c].wrapping_add(v[d]);
            v[b] = (v[b] ^ v[c]).rotate_right(63);
        }
    }
    for (i, x) in h.iter_mut().enumerate() {
        *x ^= v[i] ^ v[i + 8];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn rfc_7693_appendix_a_and_empty_input() {
        // RFC 7693 Appendix A: BLAKE2b-512("abc").
        assert_eq!(
            hex(&blake2b::<64>(b"abc")),
            "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1\
             7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
        );
        assert_eq!(
            hex(&blake2b::<64>(b"")),
            "786a02f742015903c6c6fd852552d272912f4740e15847618a86e217f71f5419\
             d25e1031afee585313896444934eb04b903a685b1448b755d56f701afe9be2ce"
        );
        assert_eq!(
            hex(&blake2b::<32>(b"abc")),
            "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319"
        );
    }

    /// Every length from 0 to 600 bytes (crossing several block boundaries), at 64 and 32
    /// bytes of output, folded into one digest; the expected value comes from an
    /// independent implementation (Python's hashlib.blake2b).
    #[test]
    fn every_length_up_to_600_matches_a_reference() {
        let mut agg = Blake2b::<64>::new();
        for n in 0..=600 {
            let p = pattern(n);
            agg.update(&blake2b::<64>(&p));
            agg.update(&blake2b::<32>(&p));
        }
        assert_eq!(
            hex(&agg.finalize()),
            "d475480302f6378fda601355c572c72b5a6d5d4e332edc69741076a9d8ab8ff6\
             bce74c8c5860ec50b0d72b33d476201e535de73a5a870f09c25fc1580bd824be"
        );
    }

    #[test]
    fn chunking_does_not_change_the_digest() {
        let data = pattern(1000);
        let whole = blake2b::<64>(&data);
        for chunk in [1, 7, 127, 128, 129, 256, 999] {
            let mut h = Blake2b::<64>::new();
            let mut fed = 0;
            for c in data.chunks(chunk) {
                h.update(c);
                h.update(&[]);
                fed += c.len();
            }
            assert_eq!(fed, data.len());
            assert_eq!(h.finalize(), whole, "chunks of {chunk}");
        }
    }
}
