//! Untrusted release signatures and public keys: the minisign parsers return a typed error
//! or a value, never panic; whatever parses re-renders to text that parses to the same; the
//! streaming verifier, fed the rest of the input in uneven chunks, answers without panicking.
//! Random bytes never verify against a fixed key, so the input is also signed with a test key
//! (any comment that can be signed): that verifies through the text form, in any chunks, and
//! the file with one more byte does not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::minisign::{blake2b, comment_message, KeyId, PublicKey, Signature, Verifier};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// A real minisign public key (any fixed key will do).
const KEY: &[u8] = b"untrusted comment: minisign public key 7F53E2DD3A2BB1A5
RWSlsSs63eJTf//WyE6X9E2ZOtgDuW72ogjF4WPePM1dXNMDotjGiY8/
";

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = PublicKey::parse(data) {
        let again = PublicKey::parse(k.to_file_text().as_bytes()).expect("a rendered key parses");
        assert_eq!(again, k);
    }
    // The first byte splits the input into a signature file and the signed file.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (split as usize * 4).min(rest.len());
    let (sig_text, file) = rest.split_at(at);
    let key = PublicKey::parse(KEY).expect("the fixed key parses");
    for text in [sig_text, rest] {
        let Ok(sig) = Signature::parse(text) else {
            continue;
        };
        let again =
            Signature::parse(sig.to_file_text().as_bytes()).expect("a rendered signature parses");
        assert_eq!(again, sig);
        if let Ok(mut v) = Verifier::new(&key, &sig) {
            let _ = v.trusted_comment().field("version");
            for chunk in file.chunks(1 + split as usize % 97) {
                v.update(chunk);
            }
            assert_eq!(v.len(), file.len() as u64);
            let _ = v.finish();
        }
    }
    signed_round_trip(std::str::from_utf8(sig_text).unwrap_or("x"), file, split);
});

fn signed_round_trip(comment: &str, file: &[u8], split: u8) {
    let pair = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("a fixed seed");
    let mut pk = [0u8; 32];
    pk.copy_from_slice(pair.public_key().as_ref());
    let key = PublicKey::new(KeyId([split; 8]), pk);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(pair.sign(&blake2b::<64>(file)).as_ref());
    let mut global = [0u8; 64];
    global.copy_from_slice(pair.sign(&comment_message(&sig, comment)).as_ref());
    let Ok(signature) = Signature::new(key.key_id(), sig, comment, global) else {
        return;
    };
    let parsed =
        Signature::parse(signature.to_file_text().as_bytes()).expect("a signable comment renders");
    let mut v = Verifier::new(&key, &parsed).expect("the comment verifies");
    for chunk in file.chunks(1 + split as usize % 97) {
        v.update(chunk);
    }
    assert_eq!(
        v.clone().finish().expect("the file verifies").as_str(),
        comment
    );
    v.update(&[0]);
    assert!(v.finish().is_err(), "one more byte must not verify");
}
