use super::*;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// A key pair and a file signed by the real `minisign` 0.11 (`minisign -G -W`, then
/// `minisign -S -t "file:f version:1"` over the 6 bytes `hello\n`), and a legacy signature
/// of the same file (`minisign -S -l`).
const MINISIGN_PUB: &str = "untrusted comment: minisign public key 7F53E2DD3A2BB1A5
RWSlsSs63eJTf//WyE6X9E2ZOtgDuW72ogjF4WPePM1dXNMDotjGiY8/
";
const MINISIGN_SIG: &str = "untrusted comment: signature from minisign secret key
RUSlsSs63eJTf5DoJaBynYdbsCp31END+XnnT9A7Iq3/KUBKAtnCXglo3vjGxLTYql8NJCO6YgIo+fJNMYJHTGZ/ELLKWg8HTQ4=
trusted comment: file:f version:1
257Hvl2MIcTMvXDhRiQtYH5hYSz7eFzxCQm9kg/6PrvNXbl/FPp9QnezF4s5mdcgU5YrCQ8kTNSyg4O6osAhAA==
";
const MINISIGN_LEGACY_SIG: &str = "untrusted comment: signature from minisign secret key
RWSlsSs63eJTf9YVUdN0zVTjrFUHs1+nwp1qN5eDWYEDc2/nYV2Vw+nY4oeirvN7K3fDQUWxjPrvdSgbg9G9Pmiidr2Q7/BNhwg=
trusted comment: legacy one
Sc3reqhF9L5umIJ3PvV2wsTLvMRTjlaKesBVf1jjTi/BeYv8X5xYyq4dsV+FsboLxhZQKc3x2O1ea4dZSTtHBQ==
";
const MINISIGN_FILE: &[u8] = b"hello\n";

/// A test signer: the same steps as `docker-ctl-server release sign`.
struct TestKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl TestKey {
    fn new(seed: u8, key_id: [u8; 8]) -> TestKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let mut pk = [0u8; 32];
        pk.copy_from_slice(pair.public_key().as_ref());
        TestKey {
            pair,
            public: PublicKey::new(KeyId(key_id), pk),
        }
    }

    fn sign(&self, file: &[u8], comment: &str) -> Signature {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(&blake2b::<64>(file)).as_ref());
        let mut global = [0u8; 64];
        global.copy_from_slice(self.pair.sign(&comment_message(&sig, comment)).as_ref());
        Signature::new(self.public.key_id(), sig, comment, global).unwrap()
    }
}

const COMMENT: &str =
    "timestamp:1700000000\tfile:docker-ctl-agent version:1.2.3 target:aarch64-unknown-linux-musl";

fn binary() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[test]
fn a_signature_made_by_minisign_verifies_and_shows_its_comment() {
    let key = PublicKey::parse(MINISIGN_PUB.as_bytes()).unwrap();
    assert_eq!(key.key_id().to_string(), "7F53E2DD3A2BB1A5");
    assert_eq!(
        key.to_file_text(),
        MINISIGN_PUB,
        "renders as minisign writes it"
    );
    let sig = Signature::parse(MINISIGN_SIG.as_bytes()).unwrap();
    assert_eq!(
        sig.to_file_text(),
        MINISIGN_SIG,
        "renders as minisign writes it"
    );
    let comment = verify(&key, &sig, MINISIGN_FILE).unwrap();
    assert_eq!(comment.as_str(), "file:f version:1");
    assert_eq!(comment.field("version"), Some("1"));
    assert_eq!(comment.field("file"), Some("f"));
    assert_eq!(
        verify(&key, &sig, b"hello!"),
        Err(MinisignError::FileMismatch)
    );
}

#[test]
fn a_legacy_signature_is_refused_by_name() {
    let err = Signature::parse(MINISIGN_LEGACY_SIG.as_bytes()).unwrap_err();
    assert_eq!(err, MinisignError::LegacySignature);
    assert_eq!(err.code(), "legacy_signature");
    assert!(err.to_string().contains("legacy"), "{err}");
}

#[test]
fn streaming_in_any_chunk_size_verifies_and_reports_the_length() {
    let key = TestKey::new(7, *b"\x01\x02\x03\x04\x05\x06\x07\x08");
    let file = binary();
    let sig = Signature::parse(key.sign(&file, COMMENT).to_file_text().as_bytes()).unwrap();
    for chunk in [1usize, 100, 4096, 65536, file.len()] {
        let mut v = Verifier::new(&key.public, &sig).unwrap();
        assert!(v.is_empty());
        // The comment is checked before any byte of the file arrives.
        v.trusted_comment()
            .expect_field("target", "aarch64-unknown-linux-musl")
            .unwrap();
        for c in file.chunks(chunk) {
            v.update(c);
        }
        assert_eq!(v.len(), file.len() as u64);
        let comment = v.finish().unwrap();
        assert_eq!(comment.as_str(), COMMENT);
        comment.expect_field("version", "1.2.3").unwrap();
        comment.expect_field("file", "docker-ctl-agent").unwrap();
    }
}

#[test]
fn a_tampered_or_truncated_file_is_refused() {
    let key = TestKey::new(7, [1; 8]);
    let file = binary();
    let sig = key.sign(&file, COMMENT);
    let mut flipped = file.clone();
    flipped[123_456] ^= 0x01;
    assert_eq!(
        verify(&key.public, &sig, &flipped),
        Err(MinisignError::FileMismatch)
    );
    assert_eq!(
        verify(&key.public, &sig, &file[..file.len() - 1]),
        Err(MinisignError::FileMismatch)
    );
    let mut longer = file.clone();
    longer.push(0);
    let err = verify(&key.public, &sig, &longer).unwrap_err();
    assert_eq!(err.code(), "signature_mismatch");
    assert!(verify(&key.public, &sig, &file).is_ok());
}

#[test]
fn a_tampered_trusted_comment_is_refused_before_the_file_is_read() {
    let key = TestKey::new(7, [1; 8]);
    let file = binary();
    let text = key.sign(&file, COMMENT).to_file_text();
    for (from, to) in [
        ("version:1.2.3", "version:1.2.4"),
        ("aarch64-unknown", "x86_64-unknown"),
        ("musl\n", "musl \n"),
    ] {
        let tampered = text.replace(from, to);
        assert_ne!(tampered, text);
        let sig = Signature::parse(tampered.as_bytes()).unwrap();
        assert_eq!(
            Verifier::new(&key.public, &sig).unwrap_err(),
            MinisignError::CommentMismatch,
            "{from} -> {to}"
        );
    }
}

#[test]
fn a_signature_from_another_key_id_is_refused_with_both_ids() {
    let signer = TestKey::new(7, [1; 8]);
    let trusted = TestKey::new(9, [2; 8]);
    let sig = signer.sign(b"x", COMMENT);
    let err = Verifier::new(&trusted.public, &sig).unwrap_err();
    assert_eq!(
        err,
        MinisignError::KeyIdMismatch {
            signature: KeyId([1; 8]),
            trusted: KeyId([2; 8]),
        }
    );
    assert_eq!(err.code(), "key_id_mismatch");
    let text = err.to_string();
    assert!(
        text.contains("0101010101010101") && text.contains("0202020202020202"),
        "{text}"
    );
}

#[test]
fn another_key_under_the_same_key_id_is_refused() {
    let signer = TestKey::new(7, [1; 8]);
    let impostor = TestKey::new(8, [1; 8]);
    let file = b"payload";
    let sig = impostor.sign(file, COMMENT);
    assert_eq!(
        verify(&signer.public, &sig, file),
        Err(MinisignError::CommentMismatch)
    );
    // A file signature grafted from another key, with the right comment signature, fails
    // on the file.
    let good = signer.sign(file, COMMENT);
    let mut text = good.to_file_text();
    let good_line = text.lines().nth(1).unwrap().to_owned();
    let bad_line = impostor.sign(file, COMMENT).to_file_text();
    let bad_line = bad_line.lines().nth(1).unwrap();
    text = text.replace(&good_line, bad_line);
    let grafted = Signature::parse(text.as_bytes()).unwrap();
    assert_eq!(
        verify(&signer.public, &grafted, file),
        Err(MinisignError::CommentMismatch),
        "the global signature covers the file signature too"
    );
}

#[test]
fn fields_of_the_trusted_comment() {
    let key = TestKey::new(7, [1; 8]);
    let c = verify(
        &key.public,
        &key.sign(
            b"f",
            "version:1 version:2 target:t xversion:3 empty: novalue",
        ),
        b"f",
    )
    .unwrap();
    assert_eq!(c.field("version"), None, "a repeated field is ambiguous");
    assert_eq!(c.field("target"), Some("t"));
    assert_eq!(c.field("xversion"), Some("3"));
    assert_eq!(c.field("empty"), Some(""));
    assert_eq!(c.field("novalue"), None);
    assert_eq!(c.field("timestamp"), None);
    let found = |name: &str, want: &str| match c.expect_field(name, want) {
        Err(MinisignError::FieldMismatch { found, .. }) => found,
        other => panic!("{other:?}"),
    };
    assert_eq!(found("version", "1"), "ambiguous");
    assert_eq!(found("target", "u"), "t");
    assert_eq!(found("file", "x"), "missing");
    let err = c.expect_field("target", "aarch64").unwrap_err();
    assert_eq!(err.code(), "signed_field_mismatch");
    assert_eq!(err.to_string(), "the signed target is t, expected aarch64");
}

#[test]
fn comments_that_cannot_be_written_are_refused_when_signing() {
    let key = TestKey::new(7, [1; 8]);
    for bad in [
        "a\nb",
        "a\rb",
        "a\0b",
        &"x".repeat(MAX_TRUSTED_COMMENT_LEN + 1),
    ] {
        let err = Signature::new(key.public.key_id(), [0; 64], bad, [0; 64]).unwrap_err();
        assert_eq!(err.code(), "invalid_trusted_comment");
    }
    assert!(Signature::new(key.public.key_id(), [0; 64], "a\tb", [0; 64]).is_ok());
    assert!(Signature::new(key.public.key_id(), [0; 64], "", [0; 64]).is_ok());
}

#[test]
fn public_key_forms_and_malformed_keys() {
    let key = PublicKey::parse(MINISIGN_PUB.as_bytes()).unwrap();
    let bare = "RWSlsSs63eJTf//WyE6X9E2ZOtgDuW72ogjF4WPePM1dXNMDotjGiY8/";
    assert_eq!(PublicKey::parse(bare.as_bytes()).unwrap(), key);
    let crlf = MINISIGN_PUB.replace('\n', "\r\n") + "\n\n";
    assert_eq!(PublicKey::parse(crlf.as_bytes()).unwrap(), key);
    assert_eq!(
        format!("{key:?}"),
        format!("PublicKey(7F53E2DD3A2BB1A5 {bare})")
    );
    let cases: &[&[u8]] = &[
        b"",
        b"untrusted comment: x\n",
        b"untrusted comment: x\nRWSl\n",
        b"untrusted comment: x\nRWSlsSs63eJTf//WyE6X9E2ZOtgDuW72ogjF4WPePM1dXNMDotjGiY8/\nextra\n",
        // A signature line is not a key.
        b"RUSlsSs63eJTf5DoJaBynYdbsCp31END+XnnT9A7Iq3/KUBKAtnCXglo3vjGxLTYql8NJCO6YgIo+fJNMYJHTGZ/ELLKWg8HTQ4=",
        // Another algorithm tag ("EE" instead of "Ed").
        b"RUWlsSs63eJTf//WyE6X9E2ZOtgDuW72ogjF4WPePM1dXNMDotjGiY8/",
        b"!!!!sSs63eJTf//WyE6X9E2ZOtgDuW72ogjF4WPePM1dXNMDotjGiY8/",
        b"\xff\xfe",
    ];
    for c in cases {
        let err = PublicKey::parse(c).unwrap_err();
        assert_eq!(
            err.code(),
            "invalid_public_key",
            "{:?}",
            String::from_utf8_lossy(c)
        );
    }
    let huge = vec![b'A'; MAX_PUBLIC_KEY_FILE_LEN + 1];
    assert!(PublicKey::parse(&huge).is_err());
}

#[test]
fn malformed_signature_files_are_refused() {
    let good = MINISIGN_SIG;
    let lines: Vec<&str> = good.lines().collect();
    let with = |i: usize, l: &str| {
        let mut v = lines.clone();
        v[i] = l;
        v.join("\n")
    };
    let cases = [
        String::new(),
        lines[..3].join("\n"),
        format!("{good}extra line\n"),
        with(0, "comment: no prefix"),
        with(1, "RUSl"),
        with(1, &lines[1].replace('R', "*")),
        with(2, "trusted comment:no space"),
        with(2, "untrusted comment: wrong"),
        with(3, "AAAA"),
        with(3, &lines[3].replace("AA==", "A===")),
        // Another algorithm tag ("EE").
        with(1, &lines[1].replacen("RUSl", "RUWl", 1)),
    ];
    for c in &cases {
        let err = Signature::parse(c.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "invalid_signature", "{c:?}: {err}");
    }
    let huge = format!("{good}{}", " ".repeat(MAX_SIGNATURE_FILE_LEN));
    assert!(Signature::parse(huge.as_bytes()).is_err());
    // CRLF line ends and trailing blank lines are fine.
    let crlf = good.replace('\n', "\r\n") + "\r\n";
    assert_eq!(
        Signature::parse(crlf.as_bytes()).unwrap(),
        Signature::parse(good.as_bytes()).unwrap()
    );
}

/// Truncations, flipped bytes and junk: every outcome is a typed answer, never a panic,
/// and nothing but the original verifies.
#[test]
fn truncated_and_garbage_inputs_never_panic_and_never_verify() {
    let key = PublicKey::parse(MINISIGN_PUB.as_bytes()).unwrap();
    let sig = MINISIGN_SIG.as_bytes();
    let mut tried = 0;
    let mut verified = 0;
    let mut check = |bytes: &[u8]| {
        tried += 1;
        let _ = PublicKey::parse(bytes);
        if let Ok(s) = Signature::parse(bytes) {
            if verify(&key, &s, MINISIGN_FILE).is_ok() {
                verified += 1;
                assert_eq!(s, Signature::parse(sig).unwrap());
            }
        }
    };
    for n in 0..=sig.len() {
        check(&sig[..n]);
    }
    for i in 0..sig.len() {
        for x in [0x01u8, 0x20, 0x80] {
            let mut b = sig.to_vec();
            b[i] ^= x;
            check(&b);
        }
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for len in [0usize, 1, 17, 56, 100, 200, 300, 5000] {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        check(&junk);
    }
    assert!(tried > 1000, "{tried}");
    // Only the untouched file, the ones cut inside the final newline, and flips that
    // change only the untrusted comment (which is not signed) verify.
    assert!(verified >= 2, "{verified}");
}
