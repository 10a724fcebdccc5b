//! Personal data and crypto-shredding: fields marked `#[event(personal)]` are stored encrypted
//! with a key per data subject; forgetting the subject destroys the key, and from then on
//! every reader gets [`Personal::Redacted`] for those fields, never an error, while the rest
//! of each event reads as before.
//!
//! The store seals a new event's personal fields before writing it ([`seal`]) and opens them
//! on every read ([`reveal`]); keys live behind a [`KeyStore`] (the PostgreSQL one is
//! `es_postgres::PgKeyStore`). A sealed field is stored as
//! `{"$personal":{"key":"<key id>","data":"<base64 of nonce and ciphertext>"}}`: XChaCha20-
//! Poly1305 with the event id, event type and field name as associated data, so a ciphertext
//! moved to another event or field does not open. A field whose key is gone reads as
//! `{"$redacted":true}`, which [`Personal`] decodes as `Redacted`.

use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{NewEvent, RecordedEvent, StoreError, StreamId};

/// The key of the marker a sealed field is stored as.
pub const SEALED: &str = "$personal";
/// The key of the marker a field reads as once its subject is forgotten.
pub const REDACTED: &str = "$redacted";
/// The event type `forget` appends, in stream [`forgotten_stream`] of the subject.
pub const SUBJECT_FORGOTTEN: &str = "SubjectForgotten";

/// A personal field of an event: its value while its data subject is remembered, `Redacted`
/// once the subject was forgotten (its key destroyed). Serializes as the bare value. Its
/// `Debug` does not print the value, so logging an event leaks none of it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Personal<T> {
    /// The value, as written.
    Known(T),
    /// The subject was forgotten: the value is gone for good.
    Redacted,
}

impl<T> Personal<T> {
    /// The value, unless redacted.
    pub fn known(&self) -> Option<&T> {
        match self {
            Self::Known(value) => Some(value),
            Self::Redacted => None,
        }
    }

    /// Whether the subject was forgotten.
    pub fn is_redacted(&self) -> bool {
        matches!(self, Self::Redacted)
    }
}

impl<T> std::fmt::Debug for Personal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Known(_) => f.write_str("Personal::Known(..)"),
            Self::Redacted => f.write_str("Personal::Redacted"),
        }
    }
}

impl<T> From<T> for Personal<T> {
    fn from(value: T) -> Self {
        Self::Known(value)
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Personal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Known(value) => value.fmt(f),
            Self::Redacted => f.write_str("[redacted]"),
        }
    }
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Known(value) => value.serialize(serializer),
            Self::Redacted => {
                let mut map = serde_json::Map::new();
                map.insert(REDACTED.to_owned(), Value::Bool(true));
                map.serialize(serializer)
            }
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        if is_redacted(&value) {
            return Ok(Self::Redacted);
        }
        if sealed_key(&value).is_some() {
            return Err(serde::de::Error::custom(
                "a personal field is still sealed: read it through a store that has its key store",
            ));
        }
        // Not serde's message: it may quote the value, and errors end up in tables (parked
        // events, dead letters) and logs that forgetting does not reach.
        T::deserialize(value).map(Self::Known).map_err(|_| {
            serde::de::Error::custom(format!(
                "a personal field does not decode as {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// Exactly `{"$redacted": true}`.
fn is_redacted(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.len() == 1 && map.get(REDACTED) == Some(&Value::Bool(true)))
}

/// A value shaped like one of the markers (what a non-personal field must never hold).
fn looks_like_marker(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.len() == 1
        && (map.contains_key(REDACTED) || map.contains_key(SEALED)))
}

/// Which fields of an event are personal, and whose: what `#[event(personal)]` and
/// `#[event(subject)]` declare, returned by [`DomainEvent::personal_data`](crate::DomainEvent::personal_data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonalData {
    /// The data subject; `None`: the stream the event is appended to.
    pub subject: Option<String>,
    /// The payload's top-level keys holding personal data.
    pub fields: &'static [&'static str],
}

/// A data subject's key: its id (stored beside each sealed field) and the 32 key bytes.
#[derive(Clone)]
pub struct SubjectKey {
    /// Names the key in sealed fields; says nothing of the subject.
    pub id: Uuid,
    /// The XChaCha20-Poly1305 key.
    pub key: [u8; 32],
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SubjectKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&key);
        Self {
            id: Uuid::now_v7(),
            key: bytes,
        }
    }
}

/// Where subjects' keys live. Forgetting a subject destroys its key; nothing can read its
/// sealed fields afterwards.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The key of `subject`, created when it has none, recording that `stream` holds data of
    /// it (so forgetting can drop that stream's snapshots).
    async fn key_for(&self, subject: &str, stream: &StreamId) -> Result<SubjectKey, StoreError>;

    /// The keys among `ids` that still exist.
    async fn keys(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, SubjectKey>, StoreError>;
}

/// The stream [`SUBJECT_FORGOTTEN`] events of `subject` go to: `forgotten-` and a name-based
/// UUID of the subject, so the subject itself appears nowhere in it.
pub fn forgotten_stream(subject: &str) -> StreamId {
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, subject.as_bytes());
    #[allow(clippy::expect_used)]
    StreamId::new(format!("forgotten-{id}")).expect("a short id without NUL is a valid stream id")
}

/// Seals the personal fields of `events` (appended to `stream`) with their subjects' keys.
/// Events without personal data are left as they are.
pub async fn seal(
    keys: &dyn KeyStore,
    stream: &StreamId,
    events: &mut [NewEvent],
) -> Result<(), StoreError> {
    let mut cache: HashMap<String, SubjectKey> = HashMap::new();
    for event in events.iter_mut() {
        let invalid = |reason: String| StoreError::InvalidEvent {
            stream: stream.clone(),
            event_id: event.event_id,
            reason,
        };
        let Some(personal) = event.personal.clone() else {
            refuse_forged_markers(event.payload.get()).map_err(invalid)?;
            continue;
        };
        let subject = personal
            .subject
            .clone()
            .unwrap_or_else(|| stream.as_str().to_owned());
        // Messages name fields, never values: they may end up in logs.
        let mut payload: serde_json::Map<String, Value> = serde_json::from_str(event.payload.get())
            .map_err(|_| {
                invalid("an event with personal fields must be a JSON object".to_owned())
            })?;
        for (field, value) in &payload {
            if !personal.fields.contains(&field.as_str()) && looks_like_marker(value) {
                return Err(invalid(format!(
                    "field {field} is shaped like a sealed or redacted personal field but is not                      declared personal"
                )));
            }
        }
        let key = match cache.get(&subject) {
            Some(key) => key.clone(),
            None => {
                let key = keys.key_for(&subject, stream).await?;
                cache.insert(subject.clone(), key.clone());
                key
            }
        };
        for field in personal.fields {
            let Some(value) = payload.get_mut(*field) else {
                // Sealing fails closed: a declared field the payload lacks (a serde rename the
                // derive could not see) would otherwise be written in plaintext under its
                // other name.
                return Err(invalid(format!(
                    "personal field {field} is not in the payload (renamed or skipped?)"
                )));
            };
            if is_redacted(value) {
                continue;
            }
            let plain = serde_json::to_vec(value)
                .map_err(|_| invalid(format!("personal field {field} does not encode")))?;
            let sealed = encrypt(&key, event.event_id, &event.event_type, field, &plain)
                .map_err(|reason| invalid(format!("personal field {field}: {reason}")))?;
            *value = sealed;
        }
        let text = serde_json::to_string(&payload)
            .map_err(|_| invalid("re-encoding the sealed payload failed".to_owned()))?;
        event.payload = RawValue::from_string(text)
            .map_err(|_| invalid("re-encoding the sealed payload failed".to_owned()))?;
    }
    Ok(())
}

/// Refuses events without personal fields whose payload holds a marker-shaped value at its top
/// level (user input such as a stored webhook body, say): readers would take it for a sealed
/// or redacted field. [`seal`] checks it too; a store calls this when no event has personal
/// fields.
pub fn refuse_forged(stream: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    for event in events.iter().filter(|e| e.personal.is_none()) {
        refuse_forged_markers(event.payload.get()).map_err(|reason| StoreError::InvalidEvent {
            stream: stream.clone(),
            event_id: event.event_id,
            reason,
        })?;
    }
    Ok(())
}

fn refuse_forged_markers(payload: &str) -> Result<(), String> {
    if !payload.contains(SEALED) && !payload.contains(REDACTED) {
        return Ok(());
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(payload) else {
        return Ok(());
    };
    match map.iter().find(|(_, value)| looks_like_marker(value)) {
        Some((field, _)) => Err(format!(
            "field {field} is shaped like a sealed or redacted personal field but is not              declared personal"
        )),
        None => Ok(()),
    }
}

/// The new event as it would read back once its subject was forgotten, where the stored one
/// reads redacted: a repeat of an append whose subject was forgotten meanwhile is judged on
/// the fields that remain.
pub fn redacted_like(new: &NewEvent, stored: &RecordedEvent) -> Option<NewEvent> {
    let personal = new.personal.as_ref()?;
    if !stored.payload.get().contains(REDACTED) {
        return None;
    }
    let Ok(Value::Object(stored_map)) = serde_json::from_str::<Value>(stored.payload.get()) else {
        return None;
    };
    let Ok(Value::Object(mut new_map)) = serde_json::from_str::<Value>(new.payload.get()) else {
        return None;
    };
    let mut changed = false;
    for field in personal.fields {
        if stored_map.get(*field).is_some_and(is_redacted) && new_map.contains_key(*field) {
            new_map.insert((*field).to_owned(), redacted());
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    let mut copy = new.clone();
    copy.payload = serde_json::value::to_raw_value(&new_map).ok()?;
    Some(copy)
}

/// Opens the sealed fields of `events` in place: the value written, or `{"$redacted":true}`
/// when the subject's key is gone. Events without sealed fields are not parsed.
pub async fn reveal(keys: &dyn KeyStore, events: &mut [RecordedEvent]) -> Result<(), StoreError> {
    let sealed: Vec<usize> = (0..events.len())
        .filter(|&i| events[i].payload.get().contains(SEALED))
        .collect();
    if sealed.is_empty() {
        return Ok(());
    }
    let mut wanted: Vec<Uuid> = Vec::new();
    let mut parsed: Vec<(usize, serde_json::Map<String, Value>)> = Vec::new();
    for i in sealed {
        let event = &events[i];
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(event.payload.get()) else {
            continue;
        };
        for value in map.values() {
            if let Some(id) = sealed_key(value) {
                wanted.push(id);
            }
        }
        parsed.push((i, map));
    }
    wanted.sort_unstable();
    wanted.dedup();
    let found = keys.keys(&wanted).await?;
    for (i, mut map) in parsed {
        let event = &mut events[i];
        let mut changed = false;
        for (field, value) in map.iter_mut() {
            let Some(id) = sealed_key(value) else {
                continue;
            };
            let opened = found.get(&id).map(|key| {
                decrypt(key, event.event_id, &event.event_type, field, value).map_err(|reason| {
                    StoreError::Malformed {
                        event_id: Some(event.event_id),
                        position: Some(event.position),
                        field: "payload",
                        reason: format!("personal field {field} does not open: {reason}"),
                    }
                })
            });
            *value = match opened {
                Some(plain) => plain?,
                None => redacted(),
            };
            changed = true;
        }
        if changed {
            let text = serde_json::to_string(&map).map_err(|e| StoreError::Malformed {
                event_id: Some(event.event_id),
                position: Some(event.position),
                field: "payload",
                reason: e.to_string(),
            })?;
            event.payload = crate::Payload::from_stored(text);
        }
    }
    Ok(())
}

fn redacted() -> Value {
    let mut map = serde_json::Map::new();
    map.insert(REDACTED.to_owned(), Value::Bool(true));
    Value::Object(map)
}

/// The key id of a sealed field: exactly `{"$personal": {"key": <uuid>, "data": <text>}}`.
fn sealed_key(value: &Value) -> Option<Uuid> {
    let Value::Object(outer) = value else {
        return None;
    };
    if outer.len() != 1 {
        return None;
    }
    let inner = outer.get(SEALED)?.as_object()?;
    if inner.len() != 2 || !inner.get("data").is_some_and(Value::is_string) {
        return None;
    }
    inner.get("key")?.as_str()?.parse().ok()
}

fn associated_data(event_id: Uuid, event_type: &str, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + event_type.len() + field.len() + 2);
    aad.extend_from_slice(event_id.as_bytes());
    aad.extend_from_slice(event_type.as_bytes());
    aad.push(0);
    aad.extend_from_slice(field.as_bytes());
    aad
}

fn encrypt(
    key: &SubjectKey,
    event_id: Uuid,
    event_type: &str,
    field: &str,
    plain: &[u8],
) -> Result<Value, String> {
    let aad = associated_data(event_id, event_type, field);
    let data = seal_bytes(&key.key, &aad, plain)?;
    let mut inner = serde_json::Map::new();
    inner.insert("key".to_owned(), Value::String(key.id.to_string()));
    inner.insert("data".to_owned(), Value::String(data));
    let mut outer = serde_json::Map::new();
    outer.insert(SEALED.to_owned(), Value::Object(inner));
    Ok(Value::Object(outer))
}

fn decrypt(
    key: &SubjectKey,
    event_id: Uuid,
    event_type: &str,
    field: &str,
    sealed: &Value,
) -> Result<Value, String> {
    let data = sealed
        .get(SEALED)
        .and_then(|inner| inner.get("data"))
        .and_then(Value::as_str)
        .ok_or("no data")?;
    let aad = associated_data(event_id, event_type, field);
    let plain = open_bytes(&key.key, &aad, data).map_err(|_| {
        "authentication failed (another event's or field's ciphertext, or a wrong key)".to_owned()
    })?;
    serde_json::from_slice(&plain).map_err(|e| e.to_string())
}

/// Keys in memory, for tests and the in-memory store.
#[derive(Default)]
pub struct InMemoryKeyStore {
    keys: std::sync::Mutex<HashMap<String, SubjectKey>>,
}

impl InMemoryKeyStore {
    /// No keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Destroys `subject`'s key; returns whether it had one.
    pub fn forget(&self, subject: &str) -> bool {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(subject)
            .is_some()
    }
}

#[async_trait]
impl KeyStore for InMemoryKeyStore {
    async fn key_for(&self, subject: &str, _stream: &StreamId) -> Result<SubjectKey, StoreError> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(subject.to_owned())
            .or_insert_with(SubjectKey::generate)
            .clone())
    }

    async fn keys(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, SubjectKey>, StoreError> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|k| ids.contains(&k.id))
            .map(|k| (k.id, k.clone()))
            .collect())
    }
}

/// The key of the marker a sealed snapshot state is stored as.
pub const SEALED_STATE: &str = "$sealed_state";

/// Seals a snapshot's state (JSON text) so that opening it needs every one of `keys`: the
/// state is encrypted with a fresh data key split into one share per subject key (the shares
/// XOR to the data key), each share sealed with its subject's key. Forgetting any of those
/// subjects makes the snapshot unreadable, as it may hold that subject's data. `context`
/// (the stream and versions) is bound as associated data.
pub fn seal_state(keys: &[SubjectKey], context: &str, state: &str) -> Result<String, String> {
    let data_key = XChaCha20Poly1305::generate_key(&mut OsRng);
    let mut last = [0u8; 32];
    last.copy_from_slice(&data_key);
    let mut shares = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let share: [u8; 32] = if i + 1 == keys.len() {
            last
        } else {
            let random = XChaCha20Poly1305::generate_key(&mut OsRng);
            for (l, r) in last.iter_mut().zip(random.iter()) {
                *l ^= r;
            }
            let mut share = [0u8; 32];
            share.copy_from_slice(&random);
            share
        };
        let sealed = seal_bytes(&key.key, context.as_bytes(), &share)?;
        shares.push(serde_json::json!({ "key": key.id.to_string(), "share": sealed }));
    }
    let mut data_key_bytes = [0u8; 32];
    data_key_bytes.copy_from_slice(&data_key);
    let data = seal_bytes(&data_key_bytes, context.as_bytes(), state.as_bytes())?;
    let sealed = serde_json::json!({ SEALED_STATE: { "shares": shares, "data": data } });
    Ok(sealed.to_string())
}

/// Whether a stored snapshot state is sealed.
pub fn is_sealed_state(state: &str) -> bool {
    state
        .trim_start()
        .starts_with(&format!("{{\"{SEALED_STATE}\""))
}

/// Opens a state sealed by [`seal_state`]: `Ok(None)` when a key it needs is gone.
pub fn open_state(
    keys: &HashMap<Uuid, SubjectKey>,
    context: &str,
    sealed: &str,
) -> Result<Option<String>, String> {
    let value: Value = serde_json::from_str(sealed).map_err(|e| e.to_string())?;
    let inner = value.get(SEALED_STATE).ok_or("not a sealed state")?;
    let shares = inner
        .get("shares")
        .and_then(Value::as_array)
        .ok_or("no shares")?;
    let mut data_key = [0u8; 32];
    for share in shares {
        let id: Uuid = share
            .get("key")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or("a share without its key id")?;
        let Some(key) = keys.get(&id) else {
            return Ok(None);
        };
        let sealed_share = share
            .get("share")
            .and_then(Value::as_str)
            .ok_or("a share without data")?;
        let bytes = open_bytes(&key.key, context.as_bytes(), sealed_share)?;
        if bytes.len() != 32 {
            return Err("a share is not 32 bytes".to_owned());
        }
        for (d, b) in data_key.iter_mut().zip(bytes) {
            *d ^= b;
        }
    }
    let data = inner.get("data").and_then(Value::as_str).ok_or("no data")?;
    let plain = open_bytes(&data_key, context.as_bytes(), data)?;
    String::from_utf8(plain)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn seal_bytes(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<String, String> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(&nonce, Payload { msg: plain, aad })
        .map_err(|_| "encryption failed".to_owned())?;
    let mut data = nonce.to_vec();
    data.extend_from_slice(&ciphertext);
    Ok(BASE64.encode(data))
}

fn open_bytes(key: &[u8; 32], aad: &[u8], sealed: &str) -> Result<Vec<u8>, String> {
    let data = BASE64.decode(sealed).map_err(|e| e.to_string())?;
    if data.len() < 24 {
        return Err("shorter than a nonce".to_owned());
    }
    let (nonce, ciphertext) = data.split_at(24);
    let nonce: [u8; 24] = nonce
        .try_into()
        .map_err(|_| "shorter than a nonce".to_owned())?;
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| "authentication failed".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Metadata, Payload};

    fn recorded(new: &NewEvent, stream: &StreamId) -> RecordedEvent {
        RecordedEvent {
            event_id: new.event_id,
            stream_id: stream.clone(),
            stream_version: 1,
            position: crate::Position::new(1, 1),
            event_type: new.event_type.clone(),
            schema_version: new.schema_version,
            recorded_at: chrono::Utc::now(),
            correlation_id: new.correlation_id,
            causation_id: None,
            metadata: Metadata::new(),
            split_index: 0,
            payload: Payload::from_stored(new.payload.get()),
        }
    }

    fn registered(email: &str) -> NewEvent {
        let payload =
            RawValue::from_string(format!(r#"{{"email":"{email}","plan":"gold"}}"#)).unwrap();
        let mut event = NewEvent::new("Registered", 1, payload);
        event.personal = Some(PersonalData {
            subject: None,
            fields: &["email"],
        });
        event
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn sealed_fields_open_only_in_their_own_event_and_field_and_redact_once_forgotten() {
        block_on(async {
            let keys = InMemoryKeyStore::new();
            let stream = StreamId::new("customer-1").unwrap();
            let mut events = vec![registered("a@b.c"), registered("x@y.z")];
            seal(&keys, &stream, &mut events).await.unwrap();
            for event in &events {
                let text = event.payload.get();
                assert!(!text.contains("a@b.c") && !text.contains("x@y.z"), "{text}");
                assert!(text.contains("\"plan\":\"gold\""), "{text}");
            }
            let mut read: Vec<RecordedEvent> =
                events.iter().map(|e| recorded(e, &stream)).collect();
            reveal(&keys, &mut read).await.unwrap();
            assert_eq!(read[0].payload.get(), r#"{"email":"a@b.c","plan":"gold"}"#);

            // A ciphertext moved to another event (another id as associated data) does not open.
            let mut moved = recorded(&events[0], &stream);
            moved.event_id = events[1].event_id;
            let error = reveal(&keys, std::slice::from_mut(&mut moved))
                .await
                .unwrap_err();
            assert!(
                matches!(error, StoreError::Malformed { event_id: Some(id), .. } if id == events[1].event_id),
                "{error}"
            );
            // Nor under another type name.
            let mut renamed = recorded(&events[0], &stream);
            renamed.event_type = "Other".into();
            assert!(
                reveal(&keys, std::slice::from_mut(&mut renamed))
                    .await
                    .is_err()
            );

            assert!(keys.forget("customer-1"));
            let mut read: Vec<RecordedEvent> =
                events.iter().map(|e| recorded(e, &stream)).collect();
            reveal(&keys, &mut read).await.unwrap();
            assert_eq!(
                read[0].payload.get(),
                r#"{"email":{"$redacted":true},"plan":"gold"}"#
            );
        });
    }

    #[test]
    fn sealing_fails_closed_and_refuses_forged_markers() {
        block_on(async {
            let keys = InMemoryKeyStore::new();
            let stream = StreamId::new("customer-1").unwrap();
            // A declared field the payload lacks (renamed by serde, say) is refused, not
            // written in plaintext under its other name.
            let mut renamed = registered("a@b.c");
            renamed.personal = Some(PersonalData {
                subject: None,
                fields: &["e_mail"],
            });
            let error = seal(&keys, &stream, std::slice::from_mut(&mut renamed))
                .await
                .unwrap_err();
            assert!(error.to_string().contains("e_mail"), "{error}");
            assert!(!error.to_string().contains("a@b.c"), "{error}");
            // A non-personal field shaped like a marker would be read as one.
            for forged in [
                r#"{"body":{"$personal":{"key":"k","data":"d"}}}"#,
                r#"{"body":{"$redacted":true}}"#,
            ] {
                let event = NewEvent::new("Hook", 1, RawValue::from_string(forged.into()).unwrap());
                assert!(refuse_forged(&stream, std::slice::from_ref(&event)).is_err());
                let mut with_personal = registered("a@b.c");
                let mut map: serde_json::Map<String, Value> =
                    serde_json::from_str(with_personal.payload.get()).unwrap();
                let body: Value = serde_json::from_str(forged).unwrap();
                map.insert("body".into(), body["body"].clone());
                with_personal.payload = serde_json::value::to_raw_value(&map).unwrap();
                assert!(
                    seal(&keys, &stream, std::slice::from_mut(&mut with_personal))
                        .await
                        .is_err()
                );
            }
            let plain = NewEvent::new(
                "Hook",
                1,
                RawValue::from_string(r#"{"body":{"$redacted":true,"x":1}}"#.into()).unwrap(),
            );
            assert!(refuse_forged(&stream, std::slice::from_ref(&plain)).is_ok());
        });
    }

    #[test]
    fn decode_errors_of_personal_fields_never_quote_the_value() {
        let error = serde_json::from_str::<Personal<u64>>(r#""jane@example.org""#).unwrap_err();
        assert!(!error.to_string().contains("jane"), "{error}");
        assert_eq!(
            format!("{:?}", Personal::Known("jane".to_owned())),
            "Personal::Known(..)"
        );
    }

    #[test]
    fn hostile_sealed_markers_are_errors_or_passed_over_never_panics() {
        block_on(async {
            let keys = InMemoryKeyStore::new();
            let stream = StreamId::new("customer-1").unwrap();
            let mut sealed = vec![registered("a@b.c")];
            seal(&keys, &stream, &mut sealed).await.unwrap();
            let key_id = keys.key_for("customer-1", &stream).await.unwrap().id;
            for payload in [
                format!(r#"{{"email":{{"$personal":{{"key":"{key_id}","data":"!!"}}}}}}"#),
                format!(r#"{{"email":{{"$personal":{{"key":"{key_id}","data":"AAAA"}}}}}}"#),
                format!(r#"{{"email":{{"$personal":{{"key":"{key_id}"}}}}}}"#),
                r#"{"email":{"$personal":{"key":"not-a-uuid","data":"AAAA"}}}"#.to_owned(),
                r#"{"email":{"$personal":42}}"#.to_owned(),
                r#"["$personal"]"#.to_owned(),
                r#""$personal""#.to_owned(),
            ] {
                let mut event = recorded(&sealed[0], &stream);
                event.payload = Payload::from_stored(payload.as_str());
                let _ = reveal(&keys, std::slice::from_mut(&mut event)).await;
            }
        });
    }

    #[test]
    fn personal_values_serialize_bare_and_redacted_reads_back() {
        let known: Personal<String> = "a@b.c".to_owned().into();
        assert_eq!(serde_json::to_string(&known).unwrap(), r#""a@b.c""#);
        let redacted: Personal<String> = serde_json::from_str(r#"{"$redacted":true}"#).unwrap();
        assert!(redacted.is_redacted());
        assert_eq!(
            serde_json::to_string(&redacted).unwrap(),
            r#"{"$redacted":true}"#
        );
        let sealed = serde_json::from_str::<Personal<String>>(r#"{"$personal":{"key":"k"}}"#);
        assert!(sealed.is_err());
        assert_eq!(redacted.to_string(), "[redacted]");
    }

    #[test]
    fn sealed_states_need_every_key() {
        let (a, b) = (SubjectKey::generate(), SubjectKey::generate());
        let sealed = seal_state(&[a.clone(), b.clone()], "s\u{0}1", r#"{"x":1}"#).unwrap();
        assert!(is_sealed_state(&sealed));
        let both: HashMap<Uuid, SubjectKey> = [(a.id, a.clone()), (b.id, b)].into();
        assert_eq!(
            open_state(&both, "s\u{0}1", &sealed).unwrap().as_deref(),
            Some(r#"{"x":1}"#)
        );
        assert!(open_state(&both, "s\u{0}2", &sealed).is_err());
        let one: HashMap<Uuid, SubjectKey> = [(a.id, a)].into();
        assert_eq!(open_state(&one, "s\u{0}1", &sealed).unwrap(), None);
    }
}
