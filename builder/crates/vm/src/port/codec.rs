//! The wire of `beambake port`: Erlang's `{packet, 4}` framing (a 4-byte big-endian
//! length, then that many bytes) carrying one term in the external term format
//! (`term_to_binary/1`, decoded and encoded by the `eetf` crate), and small builders for
//! the terms the port programs send.
//!
//! Owns: framing limits and term (de)serialisation. Must not: know what a message means.

use std::io::{self, Read, Write};

pub use eetf::Term;
use eetf::{Atom, Binary, FixInteger, List, Tuple};

/// The largest packet accepted or sent (a frame, a console line, a domain XML).
pub const MAX_PACKET: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("reading a packet: {0}")]
    Io(#[from] io::Error),
    #[error("packet of {len} bytes is larger than {MAX_PACKET}")]
    TooLarge { len: usize },
    #[error("packet ended after {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
    #[error("not an Erlang external term: {0}")]
    Decode(String),
}

/// Reads one `{packet, 4}` packet; `None` when the stream ends before a new one starts.
pub fn read_packet(r: &mut impl Read) -> Result<Option<Vec<u8>>, CodecError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(CodecError::Truncated { got, want: 4 }),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_PACKET {
        return Err(CodecError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match r.read(&mut body[got..]) {
            Ok(0) => return Err(CodecError::Truncated { got, want: len }),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(body))
}

/// Writes one `{packet, 4}` packet (and flushes).
pub fn write_packet(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l as usize <= MAX_PACKET)
        .ok_or_else(|| io::Error::other(format!("packet of {} bytes", payload.len())))?;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads and decodes one term; `None` at the end of the stream.
pub fn read_term(r: &mut impl Read) -> Result<Option<Term>, CodecError> {
    match read_packet(r)? {
        None => Ok(None),
        Some(p) => Term::decode(&p[..])
            .map(Some)
            .map_err(|e| CodecError::Decode(e.to_string())),
    }
}

/// Encodes and writes one term.
pub fn write_term(w: &mut impl Write, t: &Term) -> io::Result<()> {
    let mut buf = Vec::new();
    t.encode(&mut buf)
        .map_err(|e| io::Error::other(e.to_string()))?;
    write_packet(w, &buf)
}

pub fn atom(name: &str) -> Term {
    Term::from(Atom::from(name))
}

pub fn binary(bytes: &[u8]) -> Term {
    Term::from(Binary::from(bytes))
}

pub fn int(i: i64) -> Term {
    match i32::try_from(i) {
        Ok(small) => Term::from(FixInteger::from(small)),
        Err(_) => Term::from(eetf::BigInteger::from(i)),
    }
}

pub fn tuple(elems: Vec<Term>) -> Term {
    Term::from(Tuple::from(elems))
}

pub fn list(elems: Vec<Term>) -> Term {
    Term::from(List::from(elems))
}

/// `{Tag, Value}`.
pub fn tagged(tag: &str, value: Term) -> Term {
    tuple(vec![atom(tag), value])
}

/// The atom's name, if `t` is an atom.
pub fn as_atom(t: &Term) -> Option<&str> {
    match t {
        Term::Atom(a) => Some(&a.name),
        _ => None,
    }
}

/// The bytes of a binary, or of a string sent as a list of bytes (`"abc"`, `[]`).
pub fn as_bytes(t: &Term) -> Option<Vec<u8>> {
    match t {
        Term::Binary(b) => Some(b.bytes.clone()),
        Term::ByteList(l) => Some(l.bytes.clone()),
        Term::List(l) if l.is_nil() => Some(Vec::new()),
        Term::List(l) => l
            .elements
            .iter()
            .map(|e| match e {
                Term::FixInteger(i) => u8::try_from(i.value).ok(),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// An integer that fits in `i64`.
pub fn as_int(t: &Term) -> Option<i64> {
    match t {
        Term::FixInteger(i) => Some(i64::from(i.value)),
        Term::BigInteger(b) => i64::try_from(&b.value).ok(),
        _ => None,
    }
}

/// A tuple's elements, if `t` is a tuple.
pub fn as_tuple(t: &Term) -> Option<&[Term]> {
    match t {
        Term::Tuple(t) => Some(&t.elements),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `term_to_binary({frame, <<1,2,3>>})`, as Erlang/OTP 25 writes it.
    const FRAME_ETF: &[u8] = &[
        131, 104, 2, 100, 0, 5, b'f', b'r', b'a', b'm', b'e', 109, 0, 0, 0, 3, 1, 2, 3,
    ];

    #[test]
    fn decodes_what_erlang_writes() {
        let t = Term::decode(FRAME_ETF).unwrap();
        let el = as_tuple(&t).unwrap();
        assert_eq!(as_atom(&el[0]), Some("frame"));
        assert_eq!(as_bytes(&el[1]), Some(vec![1, 2, 3]));
    }

    #[test]
    fn packets_round_trip_and_bad_ones_are_named() {
        let mut buf = Vec::new();
        write_term(&mut buf, &tagged("console", binary(b"1> "))).unwrap();
        write_term(&mut buf, &tagged("exit", int(7))).unwrap();
        write_term(&mut buf, &tagged("big", int(1 << 40))).unwrap();
        let mut r = &buf[..];
        let t = read_term(&mut r).unwrap().unwrap();
        assert_eq!(as_bytes(&as_tuple(&t).unwrap()[1]), Some(b"1> ".to_vec()));
        let t = read_term(&mut r).unwrap().unwrap();
        assert_eq!(as_int(&as_tuple(&t).unwrap()[1]), Some(7));
        let t = read_term(&mut r).unwrap().unwrap();
        assert_eq!(as_int(&as_tuple(&t).unwrap()[1]), Some(1 << 40));
        assert!(read_term(&mut r).unwrap().is_none());

        let e = read_packet(&mut &[0u8, 0, 0, 5, 1][..]).unwrap_err();
        assert!(e.to_string().contains("after 1 of 5 bytes"), "{e}");
        let e = read_packet(&mut &[0u8, 0][..]).unwrap_err();
        assert!(e.to_string().contains("after 2 of 4"), "{e}");
        let e = read_packet(&mut &[0xffu8, 0, 0, 0][..]).unwrap_err();
        assert!(matches!(e, CodecError::TooLarge { .. }), "{e}");
        let e = read_term(&mut &[0u8, 0, 0, 2, 1, 2][..]).unwrap_err();
        assert!(matches!(e, CodecError::Decode(_)), "{e}");
    }

    #[test]
    fn strings_as_lists_are_bytes() {
        // "ab" as Erlang sends it (STRING_EXT) and [] (NIL_EXT).
        let t = Term::decode(&[131u8, 107, 0, 2, b'a', b'b'][..]).unwrap();
        assert_eq!(as_bytes(&t), Some(b"ab".to_vec()));
        let t = Term::decode(&[131u8, 106][..]).unwrap();
        assert_eq!(as_bytes(&t), Some(Vec::new()));
        assert_eq!(as_bytes(&atom("x")), None);
    }
}
