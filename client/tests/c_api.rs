//! The C API (`kv::ffi`, the functions of libkv.so) called in-process against
//! a fake node that keeps a map, so its contract is checked without a cluster
//! or a C compiler: return codes, exact copies, init and shutdown rules, and
//! calls from many threads at once.
//!
//! The library's state is process-wide, so the tests of this file take turns
//! (`SERIAL`) and each ends with `kv_shutdown`.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kv::ffi::{kv_get, kv_init, kv_put, kv_shutdown, KV_ABSENT, KV_ERROR, KV_OK};
use protocol::limits::MAX_CLIENT_FRAME;
use protocol::{ClientRequest, ClientResponse, Hello, HelloReply, Operation, Reply};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node that accepts every handshake and serves gets and puts from one map
/// shared by all its connections. It runs on a runtime of its own, on its own
/// thread, since the C API blocks its callers' threads.
struct FakeNode {
    addr: String,
    _runtime: tokio::runtime::Runtime,
}

impl FakeNode {
    fn start() -> FakeNode {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("fake node runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the fake node");
        let addr = listener.local_addr().expect("local addr").to_string();
        let map: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let map = map.clone();
                tokio::spawn(async move {
                    let mut conn = Framed::new(stream, protocol::frame_codec(MAX_CLIENT_FRAME));
                    let Some(Ok(frame)) = conn.next().await else { return };
                    if protocol::decode::<Hello>(&frame).is_err() {
                        return;
                    }
                    let accepted = HelloReply::Accepted {
                        node_id: 1,
                        version: protocol::PROTOCOL_VERSION,
                        applied_index: 0,
                    };
                    if conn.send(protocol::encode(&accepted).expect("encode")).await.is_err() {
                        return;
                    }
                    while let Some(Ok(frame)) = conn.next().await {
                        let request: ClientRequest = protocol::decode(&frame).expect("request decodes");
                        let value = {
                            let mut map = map.lock().expect("map");
                            match request.op {
                                Operation::Get { key } => map.get(&key).cloned(),
                                Operation::Put { key, value, .. } => map.insert(key, value),
                                other => panic!("unexpected operation {other:?}"),
                            }
                        };
                        let response = ClientResponse {
                            id: request.id,
                            result: Ok(Reply::Value(value)),
                        };
                        if conn.send(protocol::encode(&response).expect("encode")).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeNode {
            addr,
            _runtime: runtime,
        }
    }
}

/// An address where nothing listens.
fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    drop(listener);
    addr
}

/// A NULL-terminated `char **` over `servers`; keep the first part alive.
fn server_list(servers: &[&str]) -> (Vec<CString>, Vec<*mut c_char>) {
    let strings: Vec<CString> = servers.iter().map(|s| CString::new(*s).expect("no NUL")).collect();
    let mut pointers: Vec<*mut c_char> = strings.iter().map(|s| s.as_ptr().cast_mut()).collect();
    pointers.push(std::ptr::null_mut());
    (strings, pointers)
}

fn init(servers: &[&str]) -> i32 {
    let (_strings, mut pointers) = server_list(servers);
    // SAFETY: a NULL-terminated array of C strings that outlive the call.
    unsafe { kv_init(pointers.as_mut_ptr()) }
}

fn shutdown() -> i32 {
    // SAFETY: takes no pointer.
    unsafe { kv_shutdown() }
}

fn c(text: &str) -> CString {
    CString::new(text).expect("no NUL")
}

/// `kv_get` into a 2049-byte buffer: the code and, on 0, the string.
fn get(key: &str) -> (i32, Option<String>) {
    let key = c(key);
    let mut buffer = vec![b'#' as c_char; 2049];
    // SAFETY: a C string and a 2049-byte buffer.
    let code = unsafe { kv_get(key.as_ptr().cast_mut(), buffer.as_mut_ptr()) };
    let text = (code == KV_OK).then(|| {
        let bytes: Vec<u8> = buffer.iter().take_while(|&&b| b != 0).map(|&b| b as u8).collect();
        String::from_utf8(bytes).expect("ASCII")
    });
    (code, text)
}

/// `kv_put` with an old-value buffer of `buffer_len` bytes (filled with '#'
/// first): the code and the buffer afterwards.
fn put(key: &str, value: &str, buffer_len: usize) -> (i32, Vec<u8>) {
    let (key, value) = (c(key), c(value));
    let mut buffer = vec![b'#' as c_char; buffer_len];
    // SAFETY: C strings and a buffer large enough for any old value these tests store.
    let code = unsafe { kv_put(key.as_ptr().cast_mut(), value.as_ptr().cast_mut(), buffer.as_mut_ptr()) };
    (code, buffer.iter().map(|&b| b as u8).collect())
}

#[test]
fn the_original_contract_against_a_node() {
    let _turn = serial();
    let node = FakeNode::start();
    let dead = dead_addr();

    // The first server that answers is used; dead ones before it are skipped.
    assert_eq!(init(&[&dead, &node.addr]), KV_OK);
    // A second kv_init is refused and changes nothing.
    assert_eq!(init(&[&node.addr]), KV_ERROR);

    assert_eq!(get("TestKey"), (KV_ABSENT, None));
    assert_eq!(put("TestKey", "TestValue", 16).0, KV_ABSENT);
    assert_eq!(get("TestKey"), (KV_OK, Some("TestValue".into())));
    // The old value and its NUL, not one byte more.
    let (code, old) = put("TestKey", "NewValue", 16);
    assert_eq!(code, KV_OK);
    assert_eq!(&old, b"TestValue\0######");
    assert_eq!(get("TestKey"), (KV_OK, Some("NewValue".into())));

    // Invalid input is refused before it is sent.
    assert_eq!(put("Invalid[Key]", "v", 16).0, KV_ERROR);
    assert_eq!(put("k", "Invalid@Value!", 16).0, KV_ERROR);
    assert_eq!(get("Invalid[Key]").0, KV_ERROR);
    assert_eq!(get("Invalid[Key]").0, KV_ERROR);
    assert_eq!(get(&"k".repeat(129)).0, KV_ERROR);
    assert_eq!(put("k", &"v".repeat(2049), 16).0, KV_ERROR);
    assert_eq!(get("k").0, KV_ABSENT, "a refused put was stored");

    // The largest value fits the 2049-byte buffer exactly.
    let largest = "v".repeat(2048);
    assert_eq!(put("big", &largest, 2049).0, KV_ABSENT);
    assert_eq!(get("big"), (KV_OK, Some(largest.clone())));
    let (code, old) = put("big", "small", 2050);
    assert_eq!(code, KV_OK);
    assert_eq!(&old[..2048], largest.as_bytes());
    assert_eq!(&old[2048..], b"\0#");

    // NULL pointers: -1, never a crash; a NULL old_value skips the copy.
    let key = c("TestKey");
    let value = c("Third");
    // SAFETY: NULL is accepted wherever a pointer is taken.
    unsafe {
        assert_eq!(kv_get(std::ptr::null_mut(), std::ptr::null_mut()), KV_ERROR);
        assert_eq!(kv_get(key.as_ptr().cast_mut(), std::ptr::null_mut()), KV_ERROR);
        assert_eq!(
            kv_put(key.as_ptr().cast_mut(), std::ptr::null_mut(), std::ptr::null_mut()),
            KV_ERROR
        );
        assert_eq!(
            kv_put(key.as_ptr().cast_mut(), value.as_ptr().cast_mut(), std::ptr::null_mut()),
            KV_OK
        );
    }
    assert_eq!(get("TestKey"), (KV_OK, Some("Third".into())));

    assert_eq!(shutdown(), KV_OK);
    assert_eq!(get("TestKey").0, KV_ERROR, "works after kv_shutdown");
    assert_eq!(shutdown(), KV_OK, "a second kv_shutdown");
    // kv_init works again, and the data is where it was.
    assert_eq!(init(&[&node.addr]), KV_OK);
    assert_eq!(get("TestKey"), (KV_OK, Some("Third".into())));
    assert_eq!(shutdown(), KV_OK);
}

#[test]
fn init_refuses_bad_lists_and_unreachable_servers_quickly() {
    let _turn = serial();
    let dead = dead_addr();
    // SAFETY: NULL is accepted.
    assert_eq!(unsafe { kv_init(std::ptr::null_mut()) }, KV_ERROR);
    assert_eq!(init(&[]), KV_ERROR);
    assert_eq!(init(&["localhost"]), KV_ERROR);
    assert_eq!(init(&[&dead, "host:0"]), KV_ERROR);
    let started = Instant::now();
    assert_eq!(init(&[&dead, &dead, &dead]), KV_ERROR);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused connections took {:?}",
        started.elapsed()
    );
    assert_eq!(get("k").0, KV_ERROR, "a failed kv_init left a state");
    assert_eq!(shutdown(), KV_OK);
}

/// A server that accepts connections and then never says a word; the
/// accepted sockets stay open until the returned listener thread ends with
/// the process.
fn silent_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept() {
            held.push(stream);
        }
    });
    addr
}

#[test]
fn init_gives_a_silent_server_two_seconds_then_moves_on() {
    let _turn = serial();
    let node = FakeNode::start();
    let silent = silent_addr();

    // The silent server is tried first and given its 2 s; then the next one answers.
    let started = Instant::now();
    assert_eq!(init(&[&silent, &node.addr]), KV_OK);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "kv_init with a silent first server took {took:?}"
    );
    assert_eq!(put("k", "v", 64).0, KV_ABSENT);
    assert_eq!(shutdown(), KV_OK);

    // Only silent servers: an error once each has had its 2 s, not a hang.
    let started = Instant::now();
    assert_eq!(init(&[&silent, &silent]), KV_ERROR);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(3900) && took < Duration::from_secs(12),
        "kv_init with two silent servers took {took:?}"
    );
    assert_eq!(get("k").0, KV_ERROR, "a failed kv_init left a state");
    assert_eq!(shutdown(), KV_OK);
}

#[test]
fn many_threads_share_the_library() {
    let _turn = serial();
    let node = FakeNode::start();
    assert_eq!(init(&[&node.addr]), KV_OK);

    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..50 {
                    let key = format!("thread-{t}-key-{i}");
                    let value = format!("value {t} {i}");
                    assert_eq!(put(&key, &value, 64).0, KV_ABSENT, "{key}");
                    assert_eq!(get(&key), (KV_OK, Some(value.clone())), "{key}");
                    let (code, old) = put(&key, "again", 64);
                    assert_eq!(code, KV_OK);
                    assert_eq!(&old[..=value.len()], format!("{value}\0").as_bytes());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a thread failed");
    }

    // kv_shutdown while other threads are calling: their calls answer (0, 1
    // or -1), none crashes, and kv_init works afterwards.
    let callers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..200 {
                    let code = put(&format!("late-{t}"), &format!("v{i}"), 64).0;
                    assert!([KV_OK, KV_ABSENT, KV_ERROR].contains(&code), "{code}");
                    if code == KV_ERROR {
                        break;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(shutdown(), KV_OK);
    for caller in callers {
        caller.join().expect("a caller failed");
    }
    assert_eq!(init(&[&node.addr]), KV_OK);
    assert_eq!(get("thread-7-key-49"), (KV_OK, Some("again".into())));
    assert_eq!(shutdown(), KV_OK);
}
