//! The optional Redis-protocol front door: a node with `resp_addr` in its
//! `[[nodes]]` entry also speaks RESP2 there, so `redis-cli` and Redis client
//! libraries can use kvs for the commands below.
//!
//! The gateway is a client of the cluster like any other: every command goes
//! through the client crate, which finds the leader, follows redirects,
//! retries, and tags writes for exactly-once application. So any node's RESP
//! port serves every command with kvs's guarantees (writes durable on a
//! majority, linearizable reads), at the cost of one loopback hop.
//!
//! Commands: `PING [message]`, `ECHO message`, `GET key`, `SET key value`
//! (no options), `DEL key [key ...]`, `EXISTS key [key ...]`, `SELECT 0`,
//! `QUIT`; `COMMAND ...` answers an empty list and `CLIENT ...` `+OK`, which
//! is what redis-cli and client libraries send when they connect. Anything
//! else gets `-ERR unknown command`.
//!
//! Input is bounded like the native port's: at most [`MAX_ARGS`] arguments
//! of at most [`MAX_ARG_BYTES`] each and [`MAX_COMMAND_BYTES`] together, and
//! inline commands of at most [`MAX_INLINE_BYTES`]. A connection answers one
//! command at a time and writes its answers once [`MAX_PENDING_REPLY_BYTES`]
//! are pending, so it holds at most about one command and that much answer:
//! with [`MAX_CLIENT_CONNECTIONS`] connections, the port holds at most about
//! 4,096 x 320 KiB (1.3 GiB) whatever its clients send. A request that breaks the protocol or a bound gets
//! `-ERR Protocol error: ...` and the connection is closed, as Redis does.

use bytes::{BufMut, Bytes, BytesMut};
use client::{Client, ClientConfig};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, FramedRead};
use tracing::{debug, info, warn};

use crate::network::{accept_loop, MAX_CLIENT_CONNECTIONS};

/// Most arguments one command may have.
pub const MAX_ARGS: usize = 64;
/// Largest argument, in bytes (keys and values are smaller in kvs: together
/// they fit half a 64 KiB client frame).
pub const MAX_ARG_BYTES: usize = 64 * 1024;
/// Most bytes of all arguments of one command (a `DEL` of 64 long keys fits).
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Answers of pipelined commands are written together, up to this many bytes.
pub const MAX_PENDING_REPLY_BYTES: usize = 64 * 1024;
/// Longest inline command line (`PING\r\n` typed by hand), in bytes.
pub const MAX_INLINE_BYTES: usize = 64 * 1024;

/// A request that does not follow RESP or breaks a bound.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("{0}")]
    Protocol(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits the byte stream into commands: RESP arrays of bulk strings, or
/// inline commands (words on one line).
#[derive(Debug, Default)]
pub struct RespCodec;

impl Decoder for RespCodec {
    type Item = Vec<Bytes>;
    type Error = RespError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, RespError> {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] != b'*' {
            return decode_inline(buf);
        }
        // Parse without consuming until the whole command is there.
        let Some((count, mut at)) = read_number(buf, 1, MAX_ARGS, "multibulk length")? else {
            return Ok(None);
        };
        let mut spans = Vec::with_capacity(count);
        let mut total = 0usize;
        for _ in 0..count {
            match buf.get(at) {
                None => return Ok(None),
                Some(b'$') => {}
                Some(&other) => {
                    return Err(RespError::Protocol(format!(
                        "expected '$', got '{}'",
                        char::from(other).escape_default()
                    )))
                }
            }
            let Some((len, start)) = read_number(buf, at + 1, MAX_ARG_BYTES, "bulk length")? else {
                return Ok(None);
            };
            total = total.saturating_add(len);
            if total > MAX_COMMAND_BYTES {
                return Err(RespError::Protocol(format!(
                    "command longer than {MAX_COMMAND_BYTES} bytes"
                )));
            }
            let end = start + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::Protocol("bulk string not followed by CRLF".into()));
            }
            spans.push((start, end));
            at = end + 2;
        }
        let frame = buf.split_to(at).freeze();
        Ok(Some(spans.into_iter().map(|(s, e)| frame.slice(s..e)).collect()))
    }
}

/// Reads a decimal number from `buf[from..]` up to CRLF: the number and the
/// offset after the CRLF, `None` if the line is not complete yet.
fn read_number(buf: &[u8], from: usize, max: usize, what: &str) -> Result<Option<(usize, usize)>, RespError> {
    let Some(rest) = buf.get(from..) else { return Ok(None) };
    let Some(line_len) = rest.windows(2).position(|w| w == b"\r\n") else {
        if rest.len() > 20 {
            return Err(RespError::Protocol(format!("invalid {what}")));
        }
        return Ok(None);
    };
    let digits = &rest[..line_len];
    let number = std::str::from_utf8(digits)
        .ok()
        .filter(|text| !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|text| text.parse::<usize>().ok())
        .filter(|&n| n <= max)
        .ok_or_else(|| RespError::Protocol(format!("invalid {what}")))?;
    Ok(Some((number, from + line_len + 2)))
}

fn decode_inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, RespError> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE_BYTES {
            return Err(RespError::Protocol("too big inline request".into()));
        }
        return Ok(None);
    };
    if end > MAX_INLINE_BYTES {
        return Err(RespError::Protocol("too big inline request".into()));
    }
    let line = buf.split_to(end + 1).freeze();
    let words: Vec<Bytes> = line[..end]
        .split(|b| b.is_ascii_whitespace())
        .filter(|word| !word.is_empty())
        .map(|word| line.slice_ref(word))
        .collect();
    if words.len() > MAX_ARGS {
        return Err(RespError::Protocol("too many arguments".into()));
    }
    Ok(Some(words))
}

/// RESP2 replies, written into a buffer.
enum Reply {
    Simple(&'static str),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    EmptyArray,
}

impl Reply {
    fn write(&self, out: &mut BytesMut) {
        match self {
            Reply::Simple(text) => {
                out.put_u8(b'+');
                out.put_slice(text.as_bytes());
            }
            Reply::Error(text) => {
                out.put_u8(b'-');
                // A reply line cannot hold a line break.
                out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
            }
            Reply::Integer(n) => {
                out.put_u8(b':');
                out.put_slice(n.to_string().as_bytes());
            }
            Reply::Bulk(None) => out.put_slice(b"$-1"),
            Reply::Bulk(Some(bytes)) => {
                out.put_u8(b'$');
                out.put_slice(bytes.len().to_string().as_bytes());
                out.put_slice(b"\r\n");
                out.put_slice(bytes);
            }
            Reply::EmptyArray => out.put_slice(b"*0"),
        }
        out.put_slice(b"\r\n");
    }
}

/// Accepts RESP connections on `listener`; commands go to the cluster
/// through one shared client whose first endpoint is this node.
pub async fn serve_resp(listener: TcpListener, endpoints: Vec<String>, cluster_id: String) {
    let mut config = ClientConfig::new(endpoints);
    config.cluster_id = cluster_id;
    let client = match Client::new(config) {
        Ok(client) => client,
        Err(e) => {
            warn!("RESP gateway disabled: {e}");
            return;
        }
    };
    accept_loop(listener, "RESP", MAX_CLIENT_CONNECTIONS, |stream, remote| {
        let client = client.clone();
        async move {
            match resp_connection(stream, &client).await {
                Ok(()) => debug!(%remote, "RESP client disconnected"),
                Err(e) => info!(%remote, "RESP connection closed: {e}"),
            }
        }
    })
    .await
}

async fn resp_connection(stream: TcpStream, client: &Client) -> Result<(), RespError> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut commands = FramedRead::new(read, RespCodec);
    let mut out = BytesMut::new();
    while let Some(command) = commands.next().await {
        let command = match command {
            Ok(command) => command,
            Err(RespError::Protocol(message)) => {
                Reply::Error(format!("ERR Protocol error: {message}")).write(&mut out);
                write.write_all(&out).await?;
                return Err(RespError::Protocol(message));
            }
            Err(e) => return Err(e),
        };
        let quit = command.first().is_some_and(|name| name.eq_ignore_ascii_case(b"quit"));
        let reply = if quit {
            Reply::Simple("OK")
        } else {
            execute(client, &command).await
        };
        reply.write(&mut out);
        // Pipelined commands already read are answered in one write, of bounded size.
        if quit || commands.read_buffer().is_empty() || out.len() >= MAX_PENDING_REPLY_BYTES {
            write.write_all(&out).await?;
            out.clear();
        }
        if quit {
            return Ok(());
        }
    }
    Ok(())
}

async fn execute(client: &Client, command: &[Bytes]) -> Reply {
    let Some((name, args)) = command.split_first() else {
        return Reply::Error("ERR empty command".into());
    };
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    let arity = |ok: bool| -> Result<(), Reply> {
        if ok {
            Ok(())
        } else {
            Err(Reply::Error(format!(
                "ERR wrong number of arguments for '{name}' command"
            )))
        }
    };
    let outcome: Result<Reply, Reply> = async {
        match name.as_str() {
            "ping" => {
                arity(args.len() <= 1)?;
                Ok(match args.first() {
                    Some(message) => Reply::Bulk(Some(message.to_vec())),
                    None => Reply::Simple("PONG"),
                })
            }
            "echo" => {
                arity(args.len() == 1)?;
                Ok(Reply::Bulk(Some(args[0].to_vec())))
            }
            "get" => {
                arity(args.len() == 1)?;
                let value = client.get(text(&args[0])?).await.map_err(failure)?;
                Ok(Reply::Bulk(value.map(String::into_bytes)))
            }
            "set" => {
                if args.len() > 2 {
                    return Err(Reply::Error("ERR syntax error (kvs's SET takes no options)".into()));
                }
                arity(args.len() == 2)?;
                client.put(text(&args[0])?, text(&args[1])?).await.map_err(failure)?;
                Ok(Reply::Simple("OK"))
            }
            "del" => {
                arity(!args.is_empty())?;
                let mut removed = 0;
                for key in args {
                    if client.delete(text(key)?).await.map_err(failure)?.is_some() {
                        removed += 1;
                    }
                }
                Ok(Reply::Integer(removed))
            }
            "exists" => {
                arity(!args.is_empty())?;
                let mut found = 0;
                for key in args {
                    if client.get(text(key)?).await.map_err(failure)?.is_some() {
                        found += 1;
                    }
                }
                Ok(Reply::Integer(found))
            }
            "select" => {
                arity(args.len() == 1)?;
                if args[0].as_ref() == b"0" {
                    Ok(Reply::Simple("OK"))
                } else {
                    Err(Reply::Error("ERR kvs has one database, 0".into()))
                }
            }
            "command" => Ok(Reply::EmptyArray),
            "client" => Ok(Reply::Simple("OK")),
            _ => Err(Reply::Error(format!(
                "ERR unknown command '{}'",
                name.chars().filter(|c| !c.is_control()).take(64).collect::<String>()
            ))),
        }
    }
    .await;
    outcome.unwrap_or_else(|error| error)
}

/// kvs stores text: a key or value must be UTF-8 (the node checks the rest).
fn text(bytes: &Bytes) -> Result<&str, Reply> {
    std::str::from_utf8(bytes).map_err(|_| Reply::Error("ERR kvs keys and values are UTF-8 text".into()))
}

fn failure(error: client::Error) -> Reply {
    match error {
        // The node's own words, without the client crate's prefix.
        client::Error::Server(refused) => Reply::Error(format!("ERR {refused}")),
        other => Reply::Error(format!("ERR {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, RespError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(command) = RespCodec.decode(&mut buf)? {
            out.push(command);
        }
        Ok(out)
    }

    fn words(command: &[Bytes]) -> Vec<&[u8]> {
        command.iter().map(|b| b.as_ref()).collect()
    }

    #[test]
    fn arrays_and_inline_commands_decode() {
        let got = decode_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv a\r\n\r\nPING\r\n*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(words(&got[0]), vec![&b"SET"[..], b"k", b"v a\r\n"]);
        assert_eq!(words(&got[1]), vec![&b"PING"[..]]);
        assert_eq!(words(&got[2]), vec![&b"PING"[..]]);
    }

    #[test]
    fn partial_input_waits_at_every_cut() {
        let whole = b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert!(RespCodec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut, "a partial command must not be consumed");
            buf.extend_from_slice(&whole[cut..]);
            let command = RespCodec.decode(&mut buf).unwrap().expect("whole command");
            assert_eq!(words(&command), vec![&b"GET"[..], b"0123456789"]);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn bounds_and_malformed_input_are_protocol_errors() {
        let too_many = format!("*{}\r\n", MAX_ARGS + 1);
        let too_big = format!("*1\r\n${}\r\n", MAX_ARG_BYTES + 1);
        let bad: [&[u8]; 6] = [
            too_many.as_bytes(),
            too_big.as_bytes(),
            b"*1\r\n+OK\r\n",
            b"*-1\r\n",
            b"*1\r\n$3\r\nabcXY",
            b"*99999999999999999999999\r\n",
        ];
        for input in bad {
            assert!(
                matches!(decode_all(input), Err(RespError::Protocol(_))),
                "{:?} was accepted",
                String::from_utf8_lossy(input)
            );
        }
        let long_line = vec![b'a'; MAX_INLINE_BYTES + 1];
        assert!(matches!(decode_all(&long_line), Err(RespError::Protocol(_))));
    }

    #[test]
    fn a_command_is_bounded_in_total_not_only_per_argument() {
        let args = MAX_COMMAND_BYTES / MAX_ARG_BYTES;
        let command = |extra: Option<&[u8]>| {
            let mut input = format!("*{}\r\n", args + usize::from(extra.is_some())).into_bytes();
            for _ in 0..args {
                input.extend_from_slice(format!("${MAX_ARG_BYTES}\r\n").as_bytes());
                input.extend(std::iter::repeat_n(b'a', MAX_ARG_BYTES));
                input.extend_from_slice(b"\r\n");
            }
            if let Some(extra) = extra {
                input.extend_from_slice(format!("${}\r\n", extra.len()).as_bytes());
                input.extend_from_slice(extra);
                input.extend_from_slice(b"\r\n");
            }
            input
        };
        let at_the_bound = decode_all(&command(None)).expect("a command of exactly the bound");
        assert_eq!(at_the_bound.len(), 1);
        assert!(matches!(decode_all(&command(Some(b"x"))), Err(RespError::Protocol(_))));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"*$\r\n0123456789-+:abcPING ";
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let _ = decode_all(&input);
        }
    }

    #[test]
    fn replies_encode_as_resp2() {
        let mut out = BytesMut::new();
        Reply::Simple("OK").write(&mut out);
        Reply::Error("ERR bad\r\nthing".into()).write(&mut out);
        Reply::Integer(2).write(&mut out);
        Reply::Bulk(None).write(&mut out);
        Reply::Bulk(Some(b"hi".to_vec())).write(&mut out);
        Reply::EmptyArray.write(&mut out);
        assert_eq!(&out[..], b"+OK\r\n-ERR bad  thing\r\n:2\r\n$-1\r\n$2\r\nhi\r\n*0\r\n");
    }
}
