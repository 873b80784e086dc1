//! Signed checkpoints: what a `kind: "checkpoint"` record says (file, serial, lines before it, last hash, time,
//! how the chain is hashed) and the Ed25519 signature over exactly those fields.
//!
//! The writer emits one at `audit.checkpoints.every` while records are written, as the last record of a file
//! before it is rotated, and at shutdown; each also goes to the sidecar `STEM.checkpoints.jsonl`, for an operator
//! to keep elsewhere. `tollgate audit verify --checkpoints` checks each one's signature and that the file it names
//! still holds at least that many lines, the last of them with that hash: a tail cut from a file is found.

use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};

use super::record::CheckpointRecord;

/// The bytes signed: one field a line, in a fixed order, under a versioned title.
pub fn message(checkpoint: &CheckpointRecord) -> String {
    format!(
        "tollgate audit checkpoint v1\nts={}\nfile={}\nserial={}\nrecords={}\nlast_hash={}\nchain_hash={}\n",
        checkpoint.ts,
        checkpoint.file,
        checkpoint.serial,
        checkpoint.records,
        checkpoint.last_hash,
        checkpoint.chain_hash
    )
}

/// Signs `checkpoint` (its `signature` is replaced).
pub fn sign(checkpoint: &mut CheckpointRecord, key: &Ed25519KeyPair) {
    checkpoint.signature = hex::encode(key.sign(message(checkpoint).as_bytes()).as_ref());
}

/// Whether `checkpoint`'s signature is good under `public_key` (32 bytes).
pub fn signature_holds(checkpoint: &CheckpointRecord, public_key: &[u8]) -> bool {
    let Ok(signature) = hex::decode(&checkpoint.signature) else { return false };
    UnparsedPublicKey::new(&ED25519, public_key).verify(message(checkpoint).as_bytes(), &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    #[test]
    fn a_changed_field_or_another_key_fails_the_signature() {
        let random = ring::rand::SystemRandom::new();
        let key = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&random).unwrap().as_ref()).unwrap();
        let other = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&random).unwrap().as_ref()).unwrap();
        let mut checkpoint = CheckpointRecord {
            ts: "2026-12-05T10:00:00.000Z".into(),
            file: "audit.jsonl".into(),
            serial: 3,
            records: 120,
            last_hash: "ab".repeat(32),
            chain_hash: "sha256".into(),
            ..CheckpointRecord::default()
        };
        sign(&mut checkpoint, &key);
        assert!(signature_holds(&checkpoint, key.public_key().as_ref()));
        assert!(!signature_holds(&checkpoint, other.public_key().as_ref()));
        let mut forged = checkpoint.clone();
        forged.records = 90;
        assert!(!signature_holds(&forged, key.public_key().as_ref()));
        forged = checkpoint.clone();
        forged.signature = "00".repeat(64);
        assert!(!signature_holds(&forged, key.public_key().as_ref()));
    }
}
