//! The C API of `libkv.so`: the original system's four functions, over [`Client`].
//!
//! The prototypes are in `client/include/kv.h`; their meaning is documented
//! there and on each function below. One process-wide state, created by
//! [`kv_init`] and dropped by [`kv_shutdown`], holds a multi-thread tokio
//! runtime and a [`Client`]; every call clones it out of a mutex and runs its
//! operation with `block_on` on the caller's thread, so calls from several
//! threads proceed in parallel over the client's one pipelined connection.
//!
//! No Rust panic crosses the C boundary: every function runs its body under
//! `catch_unwind` and answers -1 if it panicked. Null pointers and bytes that
//! break the rules are refused with -1; strings are read with a bounded scan,
//! so an unterminated key or value is refused as too long rather than read
//! without end.
//!
//! Environment, read by `kv_init`:
//! - `KVS_TIMEOUT_MS`: how long one `kv_get`/`kv_put` keeps retrying (leader
//!   changes, lost connections) before it answers -1; default 30000, enough
//!   for a failover with the default election timeout of 8 s.
//! - `KVS_CLUSTER_ID`: the cluster id sent in the handshake (default empty:
//!   any cluster).

use std::ffi::{c_char, c_int};
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::validate::{check_key, check_value, InvalidInput, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::{error_chain, lock, Client, ClientConfig, Error};

/// Success: `kv_get` found the key, `kv_put` replaced a value; also `kv_init`
/// and `kv_shutdown` succeeding.
pub const KV_OK: c_int = 0;
/// `kv_get`: no such key; `kv_put`: the key had no value before.
pub const KV_ABSENT: c_int = 1;
/// Failure or invalid input.
pub const KV_ERROR: c_int = -1;

/// How long `kv_init` gives each listed server to accept a connection and
/// the handshake.
pub const INIT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default deadline of one `kv_get` or `kv_put`, retries included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most entries accepted in `kv_init`'s server list.
pub const MAX_SERVERS: usize = 1024;
/// Longest `host:port` entry accepted in `kv_init`'s server list.
pub const MAX_SERVER_BYTES: usize = 1024;
/// Worker threads of the library's runtime (they run the connection's reader
/// and writer; every operation runs on its caller's thread).
const WORKER_THREADS: usize = 2;

/// The library's state between `kv_init` and `kv_shutdown`.
struct State {
    // Declared first so it is dropped first: its connection tasks are
    // cancelled while the runtime still exists.
    client: Client,
    runtime: tokio::runtime::Runtime,
}

static STATE: Mutex<Option<Arc<State>>> = Mutex::new(None);

/// Why `kv_init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// `kv_init` already succeeded and `kv_shutdown` was not called since.
    #[error("already initialized (call kv_shutdown first)")]
    AlreadyInitialized,
    /// The server list pointer is NULL.
    #[error("the server list is NULL")]
    NullList,
    /// The server list has no entry.
    #[error("the server list is empty")]
    EmptyList,
    /// The server list has more than [`MAX_SERVERS`] entries (or no NULL at its end).
    #[error("the server list has more than {MAX_SERVERS} entries (is it NULL-terminated?)")]
    TooManyServers,
    /// An entry of the server list is not a valid `host:port`.
    #[error("server list entry {index} is not host:port: {reason}")]
    Malformed {
        /// The entry's position in the list, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An environment variable that `kv_init` reads is invalid.
    #[error("{name} is invalid: {reason}")]
    Environment {
        /// The variable's name.
        name: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The library's tokio runtime could not be started.
    #[error("cannot start the client runtime")]
    Runtime(#[source] std::io::Error),
    /// No listed server accepted the connection and the handshake (holds the
    /// last error, or a handshake rejection).
    #[error("no listed server answered")]
    Unreachable(#[source] Error),
}

/// Runs one C entry point's body: a panic becomes -1 instead of unwinding
/// into C (the default panic hook has already printed it to stderr).
fn guarded(body: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(KV_ERROR)
}

/// A line on stderr; a closed stderr is ignored, never a panic.
fn say_err(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn report(function: &str, error: &dyn std::error::Error) {
    say_err(&format!("libkv: {function}: {}", error_chain(error)));
}

/// A C string longer than the most its reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TooLong;

/// The bytes of the NUL-terminated string at `ptr`, if it ends within
/// `max + 1` bytes; `Ok(None)` for a NULL pointer; `Err(TooLong)` if the
/// first `max + 1` bytes hold no NUL (nothing past them is read).
///
/// # Safety
/// `ptr` is NULL or points to memory readable up to its first NUL byte or
/// `max + 1` bytes, whichever comes first.
unsafe fn bounded_cstr<'a>(ptr: *const c_char, max: usize) -> Result<Option<&'a [u8]>, TooLong> {
    if ptr.is_null() {
        return Ok(None);
    }
    let bytes = ptr.cast::<u8>();
    for len in 0..=max {
        // SAFETY: every byte before this one was non-zero, so by the caller's
        // contract this one is readable.
        if unsafe { *bytes.add(len) } == 0 {
            // SAFETY: the `len` bytes before the NUL were just read.
            return Ok(Some(unsafe { std::slice::from_raw_parts(bytes, len) }));
        }
    }
    Err(TooLong)
}

/// The key at `ptr` if it follows the rules; otherwise prints the original's
/// message and returns `None`. NULL counts as the empty key, as in the original.
///
/// # Safety
/// As for [`bounded_cstr`].
unsafe fn read_key<'a>(ptr: *const c_char) -> Option<&'a str> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { bounded_cstr(ptr, MAX_KEY_BYTES) }.map(Option::unwrap_or_default);
    read_checked(bytes, check_key, InvalidInput::Key)
}

/// The value at `ptr` if it follows the rules; otherwise prints the
/// original's message and returns `None`.
///
/// # Safety
/// As for [`bounded_cstr`].
unsafe fn read_value<'a>(ptr: *const c_char) -> Option<&'a str> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { bounded_cstr(ptr, MAX_VALUE_BYTES) }.map(Option::unwrap_or_default);
    read_checked(bytes, check_value, InvalidInput::Value)
}

fn read_checked<'a>(
    bytes: Result<&'a [u8], TooLong>,
    check: fn(&'a [u8]) -> Result<(), InvalidInput>,
    too_long: InvalidInput,
) -> Option<&'a str> {
    let checked = bytes
        .map_err(|TooLong| too_long)
        .and_then(|bytes| check(bytes).map(|()| bytes))
        // The rules admit ASCII only, so this never fails; it is kept so that
        // no `unsafe` conversion is needed.
        .and_then(|bytes| std::str::from_utf8(bytes).map_err(|_| too_long));
    match checked {
        Ok(text) => Some(text),
        Err(invalid) => {
            say_err(&invalid.to_string());
            None
        }
    }
}

/// Copies `text` and a terminating NUL to `dest`: exactly `text.len() + 1`
/// bytes, nothing more.
///
/// # Safety
/// `dest` is writable for `text.len() + 1` bytes and does not overlap `text`.
unsafe fn copy_out(text: &[u8], dest: *mut c_char) {
    let dest = dest.cast::<u8>();
    // SAFETY: the caller guarantees room for the bytes and the NUL.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), dest, text.len());
        *dest.add(text.len()) = 0;
    }
}

/// Checks one `host:port` entry of the C caller's list, by the endpoint rule
/// every kvs tool shares (`protocol::limits::parse_endpoint`).
pub fn parse_server(entry: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(entry).map_err(|_| "not UTF-8".to_string())?;
    protocol::limits::parse_endpoint(text)
        .map(String::from)
        .map_err(|e| e.to_string())
}

/// Reads the NULL-terminated server list.
///
/// # Safety
/// `list` is NULL or points to an array of pointers ending with NULL, each
/// entry as for [`bounded_cstr`].
unsafe fn read_server_list(list: *const *const c_char) -> Result<Vec<String>, InitError> {
    if list.is_null() {
        return Err(InitError::NullList);
    }
    let mut servers = Vec::new();
    for index in 0.. {
        if index == MAX_SERVERS {
            // SAFETY: the entries before were not NULL, so this one is readable.
            if unsafe { *list.add(index) }.is_null() {
                break;
            }
            return Err(InitError::TooManyServers);
        }
        // SAFETY: as above, the array goes on until its NULL.
        let entry = unsafe { *list.add(index) };
        if entry.is_null() {
            break;
        }
        // SAFETY: a non-NULL entry is a string, by the caller's contract.
        let bytes = unsafe { bounded_cstr(entry, MAX_SERVER_BYTES) }.map_err(|TooLong| InitError::Malformed {
            index,
            reason: format!("longer than {MAX_SERVER_BYTES} bytes"),
        })?;
        let server =
            parse_server(bytes.unwrap_or_default()).map_err(|reason| InitError::Malformed { index, reason })?;
        servers.push(server);
    }
    if servers.is_empty() {
        return Err(InitError::EmptyList);
    }
    Ok(servers)
}

/// The library's client configuration: the servers, `KVS_CLUSTER_ID` and
/// `KVS_TIMEOUT_MS` (see the module documentation).
fn config_for(servers: Vec<String>) -> Result<ClientConfig, InitError> {
    let mut config = ClientConfig::new(servers);
    config.connect_timeout = INIT_CONNECT_TIMEOUT;
    config.request_timeout = DEFAULT_REQUEST_TIMEOUT;
    if let Some(id) = env_var("KVS_CLUSTER_ID")? {
        config.cluster_id = id;
    }
    if let Some(text) = env_var("KVS_TIMEOUT_MS")? {
        let ms = text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| InitError::Environment {
                name: "KVS_TIMEOUT_MS",
                reason: format!("{text:?} is not a positive number of milliseconds"),
            })?;
        config.request_timeout = Duration::from_millis(ms);
    }
    Ok(config)
}

fn env_var(name: &'static str) -> Result<Option<String>, InitError> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(InitError::Environment {
            name,
            reason: "not UTF-8".into(),
        }),
    }
}

fn current() -> Option<Arc<State>> {
    lock(&STATE).clone()
}

/// The state, or -1 (with a message) if `kv_init` has not succeeded.
fn require_state(function: &str) -> Result<Arc<State>, c_int> {
    current().ok_or_else(|| {
        say_err(&format!("libkv: {function}: not initialized (call kv_init first)"));
        KV_ERROR
    })
}

/// Connects, then installs the state; the body of [`kv_init`].
///
/// # Safety
/// As for [`kv_init`].
unsafe fn init(server_list: *const *const c_char) -> Result<String, InitError> {
    if current().is_some() {
        return Err(InitError::AlreadyInitialized);
    }
    // SAFETY: forwarded from the caller.
    let servers = unsafe { read_server_list(server_list) }?;
    let config = config_for(servers)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("libkv")
        .enable_all()
        .build()
        .map_err(InitError::Runtime)?;
    let client = runtime
        .block_on(Client::connect_once(config))
        .map_err(InitError::Unreachable)?;
    let endpoint = client.connected_endpoint().unwrap_or_default();
    let state = State { client, runtime };
    let mut slot = lock(&STATE);
    if slot.is_some() {
        // Another thread's kv_init finished first; this one changes nothing.
        drop(slot);
        state.close();
        return Err(InitError::AlreadyInitialized);
    }
    *slot = Some(Arc::new(state));
    Ok(endpoint)
}

impl State {
    /// Drops the client, then stops the runtime without waiting long for it.
    fn close(self) {
        let State { client, runtime } = self;
        drop(client);
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Connects to the store.
///
/// `server_list` is a NULL-terminated array of `"host:port"` strings (like
/// `argv`). The servers are tried in order, each given 2 seconds to accept a
/// connection and the handshake; the first that does is used (and printed as
/// `Connected to server: HOST:PORT` on stdout), and later requests follow the
/// leader among all listed servers.
///
/// Returns 0 on success; -1 if no server answered, if the list is NULL, empty
/// or has an entry that is not `host:port`, or if the library is already
/// initialized (that call changes nothing).
///
/// # Safety
/// `server_list` is NULL or a NULL-terminated array of pointers to
/// NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn kv_init(server_list: *mut *mut c_char) -> c_int {
    guarded(|| {
        // SAFETY: the caller's contract is `init`'s.
        match unsafe { init(server_list.cast_const().cast()) } {
            Ok(endpoint) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "Connected to server: {endpoint}");
                let _ = out.flush();
                KV_OK
            }
            Err(error) => {
                report("kv_init", &error);
                KV_ERROR
            }
        }
    })
}

/// Disconnects and frees everything `kv_init` made; `kv_init` may be called
/// again afterwards. Returns 0 (also when the library was not initialized).
/// Calls still running in other threads finish with the state they started
/// with.
///
/// # Safety
/// None beyond C's: this function takes no pointer.
#[no_mangle]
pub unsafe extern "C" fn kv_shutdown() -> c_int {
    guarded(|| {
        let state = lock(&STATE).take();
        if let Some(state) = state {
            // The last holder closes it; a call in flight elsewhere holds a
            // clone and drops it when it returns.
            if let Ok(state) = Arc::try_unwrap(state) {
                state.close();
            }
        }
        KV_OK
    })
}

/// Reads `key` (linearizable: through the leader).
///
/// Returns 0 if the key is present, its value copied into `value` with a
/// terminating NUL (`value` must hold at least 2049 bytes); 1 if it is not
/// present (`value` untouched); -1 on failure (not initialized, no leader
/// reachable within the timeout, a stored value longer than 2048 bytes) or an
/// invalid key (the original's message is printed on stderr).
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; `value` is NULL or writable for
/// 2049 bytes.
#[no_mangle]
pub unsafe extern "C" fn kv_get(key: *mut c_char, value: *mut c_char) -> c_int {
    guarded(|| {
        // SAFETY: the caller's contract.
        let Some(key) = (unsafe { read_key(key) }) else {
            return KV_ERROR;
        };
        if value.is_null() {
            say_err("libkv: kv_get: the value buffer is NULL");
            return KV_ERROR;
        }
        let state = match require_state("kv_get") {
            Ok(state) => state,
            Err(code) => return code,
        };
        match state.runtime.block_on(state.client.get(key)) {
            Ok(Some(found)) if found.len() <= MAX_VALUE_BYTES => {
                // SAFETY: `value` holds 2049 bytes, the caller's contract.
                unsafe { copy_out(found.as_bytes(), value) };
                KV_OK
            }
            Ok(Some(found)) => {
                say_err(&format!(
                    "libkv: kv_get: the stored value is {} bytes, more than the {MAX_VALUE_BYTES} a caller's buffer holds",
                    found.len()
                ));
                KV_ERROR
            }
            Ok(None) => KV_ABSENT,
            Err(error) => {
                report("kv_get", &error);
                KV_ERROR
            }
        }
    })
}

/// Stores `value` under `key`, exactly once (a request retried inside the
/// library after a failover is applied once).
///
/// Returns 0 if the key had a value, copied into `old_value` with its
/// terminating NUL and not one byte more (nothing is copied if `old_value` is
/// NULL; an old value longer than 2048 bytes, which only a writer other than
/// this library can store, is cut to its first 2048 bytes); 1 if the key had
/// no value; -1 on failure (not initialized; no leader within the timeout, in
/// which case the write may or may not have been applied) or an invalid key
/// or value (the original's message is printed on stderr).
///
/// # Safety
/// `key` and `value` are NULL or NUL-terminated strings; `old_value` is NULL
/// or writable for the old value and its NUL.
#[no_mangle]
pub unsafe extern "C" fn kv_put(key: *mut c_char, value: *mut c_char, old_value: *mut c_char) -> c_int {
    guarded(|| {
        // SAFETY: the caller's contract.
        let Some(key) = (unsafe { read_key(key) }) else {
            return KV_ERROR;
        };
        // SAFETY: the caller's contract.
        let Some(value) = (unsafe { read_value(value) }) else {
            return KV_ERROR;
        };
        let state = match require_state("kv_put") {
            Ok(state) => state,
            Err(code) => return code,
        };
        match state.runtime.block_on(state.client.put(key, value)) {
            Ok(Some(old)) => {
                if !old_value.is_null() {
                    let old = &old.as_bytes()[..old.len().min(MAX_VALUE_BYTES)];
                    // SAFETY: the caller's buffer holds the old value it
                    // stored (at most 2048 bytes) and its NUL.
                    unsafe { copy_out(old, old_value) };
                }
                KV_OK
            }
            Ok(None) => KV_ABSENT,
            Err(error) => {
                report("kv_put", &error);
                KV_ERROR
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    // The C prototypes of kv.h, checked against the functions at compile time.
    const _: unsafe extern "C" fn(*mut *mut c_char) -> c_int = kv_init;
    const _: unsafe extern "C" fn() -> c_int = kv_shutdown;
    const _: unsafe extern "C" fn(*mut c_char, *mut c_char) -> c_int = kv_get;
    const _: unsafe extern "C" fn(*mut c_char, *mut c_char, *mut c_char) -> c_int = kv_put;

    #[test]
    fn servers_must_be_host_and_port() {
        for good in ["127.0.0.1:5000", "localhost:1", "[::1]:65535", "kv-1.example.com:5002"] {
            assert_eq!(parse_server(good.as_bytes()), Ok(good.to_string()));
        }
        for bad in [
            "",
            "localhost",
            ":5000",
            "host:",
            "host:0",
            "host:65536",
            "host:http",
            "host:+80",
            "host:-1",
            "ho st:80",
            " host:80",
            "host:80 ",
            "[::1:80",
            "[]:80",
        ] {
            assert!(parse_server(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
        assert!(parse_server(b"h\xffst:80").is_err());
    }

    fn list(entries: &[Option<&CString>]) -> Vec<*const c_char> {
        entries
            .iter()
            .map(|entry| entry.map_or(std::ptr::null(), |s| s.as_ptr()))
            .collect()
    }

    #[test]
    fn server_list_is_read_up_to_its_null() {
        let a = CString::new("127.0.0.1:5000").unwrap();
        let b = CString::new("localhost:5001").unwrap();
        let bad = CString::new("localhost").unwrap();
        let read = |entries: &[Option<&CString>]| {
            let array = list(entries);
            // SAFETY: a NULL-terminated array of C strings (or none).
            unsafe { read_server_list(array.as_ptr()) }
        };
        assert_eq!(
            read(&[Some(&a), Some(&b), None, Some(&bad)]).expect("two servers"),
            vec!["127.0.0.1:5000".to_string(), "localhost:5001".to_string()]
        );
        assert!(matches!(read(&[None]), Err(InitError::EmptyList)));
        assert!(matches!(
            read(&[Some(&a), Some(&bad), None]),
            Err(InitError::Malformed { index: 1, .. })
        ));
        // SAFETY: NULL is allowed.
        assert!(matches!(
            unsafe { read_server_list(std::ptr::null()) },
            Err(InitError::NullList)
        ));
        let mut many = vec![Some(&a); MAX_SERVERS];
        many.push(None);
        assert_eq!(read(&many).expect("the most servers").len(), MAX_SERVERS);
        many.insert(0, Some(&a));
        assert!(matches!(read(&many), Err(InitError::TooManyServers)));
    }

    #[test]
    fn strings_are_read_with_a_bounded_scan() {
        let text = CString::new("abc").unwrap();
        // SAFETY: terminated strings, or an array read no further than max + 1.
        unsafe {
            assert_eq!(bounded_cstr(text.as_ptr(), 3), Ok(Some(&b"abc"[..])));
            assert_eq!(bounded_cstr(text.as_ptr(), 2), Err(TooLong));
            assert_eq!(bounded_cstr(std::ptr::null(), 2), Ok(None));
            let unterminated = [b'k' as c_char; MAX_KEY_BYTES + 1];
            assert_eq!(bounded_cstr(unterminated.as_ptr(), MAX_KEY_BYTES), Err(TooLong));
            assert!(read_key(unterminated.as_ptr()).is_none());
            let mut longest = vec![b'k' as c_char; MAX_KEY_BYTES];
            longest.push(0);
            assert_eq!(read_key(longest.as_ptr()).map(str::len), Some(MAX_KEY_BYTES));
            assert!(read_key(std::ptr::null()).is_none());
            assert!(read_value(std::ptr::null()).is_none());
            let value = CString::new("New Value, ok.").unwrap();
            assert_eq!(read_value(value.as_ptr()), Some("New Value, ok."));
        }
    }

    #[test]
    fn copies_write_the_string_and_its_nul_and_nothing_more() {
        let mut buffer = [b'#' as c_char; 8];
        // SAFETY: 8 bytes hold 3 and the NUL.
        unsafe { copy_out(b"abc", buffer.as_mut_ptr()) };
        let bytes: Vec<u8> = buffer.iter().map(|&c| c as u8).collect();
        assert_eq!(bytes, b"abc\0####");
        // SAFETY: as above.
        unsafe { copy_out(b"", buffer.as_mut_ptr()) };
        assert_eq!(buffer[0], 0);
        assert_eq!(buffer[1], b'b' as c_char);
    }

    #[test]
    fn a_panic_becomes_minus_one() {
        assert_eq!(guarded(|| panic!("a bug")), KV_ERROR);
        assert_eq!(guarded(|| KV_ABSENT), KV_ABSENT);
    }

    #[test]
    fn error_chains_are_one_line() {
        let error = InitError::Unreachable(Error::Connect {
            endpoint: "a:1".into(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        });
        assert_eq!(
            error_chain(&error),
            "no listed server answered: cannot connect to a:1: refused"
        );
    }
}
