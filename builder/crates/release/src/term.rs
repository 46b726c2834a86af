//! Erlang literal terms: parsing and printing.
//!
//! This module owns the *syntax* of Erlang terms as they appear in the files an
//! OTP release is made of (`releases/RELEASES`, `NAME.rel`, `sys.config`, `.app`
//! files, `.script` files, `rebar.config`): the `file:consult/1` format, a
//! sequence of literal terms each ended by a `.`.
//!
//! * [`parse_terms`] reads a whole consult-format text, [`parse_term`] reads
//!   exactly one term.
//! * [`Term`]'s `Display` prints a term back in Erlang syntax that
//!   `file:consult/1` (and [`parse_term`]) reads back to the same term.
//! * Errors are [`ParseError`]s carrying the 1-based line and column (counted
//!   in chars) of the offending token.
//!
//! What it must not do: no file I/O (callers read and write the files), and no
//! knowledge of release layout or of what any particular term *means* (which
//! tuple is a release, where applications live, ...). Those belong to the
//! callers; this module only knows Erlang's literal syntax.
//!
//! Notes on the representation:
//! * Double-quoted strings keep their literal form ([`Term::Str`]) rather than
//!   being turned into lists of integers; [`Term::as_string`] accepts both.
//! * An improper list produced by the parser is canonical: its element vector
//!   is non-empty and its tail is never a list or a string (`[a | [b]]` is read
//!   as the proper list `[a, b]`, `[a | "bc"]` as `[a, $b, $c]`).
//! * Nesting is limited to 512 levels; deeper input is an error. The parser
//!   keeps its own stack instead of recursing, so no input can overflow the
//!   call stack, and no input makes it panic.
//! * Non-finite floats have no Erlang syntax; they are printed as `1.0e999`,
//!   `-1.0e999` and `NaN`, which Erlang and this parser both reject.

use std::fmt::{self, Write as _};

/// An Erlang literal term.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// An atom, quoted or not in the source (`foo`, `'Foo bar'`).
    Atom(String),
    /// A double-quoted string literal ("..."), escapes resolved. (Erlang strings are lists of
    /// integers; we keep the literal form.)
    Str(String),
    /// A binary: `<<"abc">>`, `<<1,2,3>>`, `<<"a", 0, "b">>`, `<<>>`, `<<"é"/utf8>>`.
    Binary(Vec<u8>),
    /// An integer: `42`, `-7`, `16#ff`, `2#1010`, `1_000_000`, `$a`, `$\n`.
    Integer(i128),
    /// A float: `1.0`, `-2.5e3`, `1.0e-10`.
    Float(f64),
    /// A tuple `{a, b}`.
    Tuple(Vec<Term>),
    /// A proper list `[a, b, c]`.
    List(Vec<Term>),
    /// An improper list `[a, b | c]`: the elements and the tail.
    ImproperList(Vec<Term>, Box<Term>),
    /// A map `#{k => v}`, pairs in source order.
    Map(Vec<(Term, Term)>),
}

/// A syntax error, with the 1-based line and column (counted in chars) where it was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{line}:{column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Maximum nesting of tuples, lists, maps, binaries and parentheses.
const MAX_DEPTH: usize = 512;

/// Words the Erlang scanner always treats as reserved (never atoms when unquoted).
const RESERVED_WORDS: &[&str] = &[
    "after", "and", "andalso", "band", "begin", "bnot", "bor", "bsl", "bsr", "bxor", "case",
    "catch", "cond", "div", "end", "fun", "if", "let", "not", "of", "or", "orelse", "receive",
    "rem", "try", "when", "xor",
];

/// Words reserved only in newer OTP releases (the `maybe` feature): accepted unquoted when
/// parsing, but always quoted when printing so any OTP reads them back.
const MAYBE_RESERVED_WORDS: &[&str] = &["else", "maybe"];

/// Parses a text in `file:consult/1` format: zero or more terms, each ended by `.`.
pub fn parse_terms(src: &str) -> Result<Vec<Term>, ParseError> {
    let mut p = Parser::new(src);
    let mut out = Vec::new();
    loop {
        if matches!(p.peek()?.tok, Tok::Eof) {
            return Ok(out);
        }
        let term = p.parse_value()?;
        let end = p.next()?;
        match end.tok {
            Tok::Dot => out.push(term),
            Tok::BareDot => return Err(bare_dot_error(&end)),
            _ => {
                return Err(error_at(
                    &end,
                    format!("expected '.' after term, found {}", describe(&end.tok)),
                ))
            }
        }
    }
}

/// Parses exactly one term, optionally followed by a terminating `.`, and nothing else
/// (whitespace and comments aside).
pub fn parse_term(src: &str) -> Result<Term, ParseError> {
    let mut p = Parser::new(src);
    let term = p.parse_value()?;
    let mut next = p.next()?;
    if matches!(next.tok, Tok::Dot) {
        next = p.next()?;
    }
    match next.tok {
        Tok::Eof => Ok(term),
        Tok::BareDot => Err(bare_dot_error(&next)),
        _ => Err(error_at(
            &next,
            format!(
                "expected end of input after term, found {}",
                describe(&next.tok)
            ),
        )),
    }
}

impl Term {
    /// The atom's name, if this is an atom.
    pub fn as_atom(&self) -> Option<&str> {
        match self {
            Term::Atom(a) => Some(a),
            _ => None,
        }
    }

    /// A string: Term::Str, or a List whose elements are all Integers that are valid chars (a charlist), or an empty List.
    pub fn as_string(&self) -> Option<String> {
        match self {
            Term::Str(s) => Some(s.clone()),
            Term::List(items) => items
                .iter()
                .map(|t| match t {
                    Term::Integer(i) => u32::try_from(*i).ok().and_then(char::from_u32),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// The elements, if this is a tuple.
    pub fn as_tuple(&self) -> Option<&[Term]> {
        match self {
            Term::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// The elements, if this is a proper list (a [`Term::Str`] is not a list here).
    pub fn as_list(&self) -> Option<&[Term]> {
        match self {
            Term::List(items) => Some(items),
            _ => None,
        }
    }

    /// The value, if this is an integer.
    pub fn as_integer(&self) -> Option<i128> {
        match self {
            Term::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// For a proplist-ish list: first element that is a tuple whose first element is the atom
    /// `key`, returns that tuple's second element. (Tuples with fewer than two elements are
    /// skipped; anything but a proper list gives `None`.)
    pub fn get(&self, key: &str) -> Option<&Term> {
        self.as_list()?.iter().find_map(|t| match t {
            Term::Tuple(items) => match items.as_slice() {
                [Term::Atom(k), v, ..] if k == key => Some(v),
                _ => None,
            },
            _ => None,
        })
    }
}

// ---------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------

/// Prints the term in Erlang syntax that `file:consult/1` reads back to the same term: atoms
/// quoted only when needed, strings and atoms escaped (`\"`, `\\`, `\n`, `\t`, `\r`, other
/// non-printables as `\xHH` or `\x{HHHH}`), floats always with a `.` and digits (`1.0`,
/// `2.5e-10`), binaries as `<<"text">>` (ASCII), `<<"text"/utf8>>` (other printable UTF-8) or
/// `<<1,2,3>>`. No trailing `.` is printed.
impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Atom(a) => write_atom(f, a),
            Term::Str(s) => {
                f.write_char('"')?;
                write_escaped(f, s, '"')?;
                f.write_char('"')
            }
            Term::Binary(b) => write_binary(f, b),
            Term::Integer(i) => write!(f, "{i}"),
            Term::Float(x) => write_float(f, *x),
            Term::Tuple(items) => {
                f.write_char('{')?;
                write_seq(f, items)?;
                f.write_char('}')
            }
            Term::List(items) => {
                f.write_char('[')?;
                write_seq(f, items)?;
                f.write_char(']')
            }
            Term::ImproperList(items, tail) => {
                if items.is_empty() {
                    // `[ | T]` is not valid syntax; the Erlang value is just the tail.
                    return write!(f, "{tail}");
                }
                f.write_char('[')?;
                write_seq(f, items)?;
                write!(f, "|{tail}]")
            }
            Term::Map(pairs) => {
                f.write_str("#{")?;
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        f.write_char(',')?;
                    }
                    write!(f, "{k} => {v}")?;
                }
                f.write_char('}')
            }
        }
    }
}

fn write_seq(f: &mut fmt::Formatter<'_>, items: &[Term]) -> fmt::Result {
    for (i, t) in items.iter().enumerate() {
        if i > 0 {
            f.write_char(',')?;
        }
        write!(f, "{t}")?;
    }
    Ok(())
}

fn is_reserved_word(s: &str) -> bool {
    RESERVED_WORDS.contains(&s)
}

fn atom_needs_quotes(a: &str) -> bool {
    match a.chars().next() {
        Some(c) if c.is_ascii_lowercase() => {}
        _ => return true,
    }
    !a.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@')
        || is_reserved_word(a)
        || MAYBE_RESERVED_WORDS.contains(&a)
}

fn write_atom<W: fmt::Write>(w: &mut W, a: &str) -> fmt::Result {
    if atom_needs_quotes(a) {
        w.write_char('\'')?;
        write_escaped(w, a, '\'')?;
        w.write_char('\'')
    } else {
        w.write_str(a)
    }
}

/// Characters printed as `\xHH` / `\x{H...}` escapes inside quotes.
fn needs_hex_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFFE}'
                | '\u{FFFF}'
        )
}

fn write_escaped<W: fmt::Write>(w: &mut W, s: &str, quote: char) -> fmt::Result {
    for c in s.chars() {
        match c {
            '\\' => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            '\t' => w.write_str("\\t")?,
            '\r' => w.write_str("\\r")?,
            c if c == quote => {
                w.write_char('\\')?;
                w.write_char(c)?;
            }
            c if needs_hex_escape(c) => {
                let code = u32::from(c);
                if code <= 0xFF {
                    write!(w, "\\x{code:02X}")?;
                } else {
                    write!(w, "\\x{{{code:X}}}")?;
                }
            }
            c => w.write_char(c)?,
        }
    }
    Ok(())
}

fn write_float(f: &mut fmt::Formatter<'_>, x: f64) -> fmt::Result {
    if x.is_nan() {
        return f.write_str("NaN");
    }
    if x.is_infinite() {
        return f.write_str(if x > 0.0 { "1.0e999" } else { "-1.0e999" });
    }
    // `{:?}` is the shortest representation that reads back exactly; it may lack a '.'
    // when it uses an exponent (`1e-10`), which Erlang requires.
    let s = format!("{x:?}");
    match s.split_once(['e', 'E']) {
        Some((mantissa, exp)) if !mantissa.contains('.') => write!(f, "{mantissa}.0e{exp}"),
        Some((mantissa, exp)) => write!(f, "{mantissa}e{exp}"),
        None if !s.contains('.') => write!(f, "{s}.0"),
        None => f.write_str(&s),
    }
}

fn write_binary(f: &mut fmt::Formatter<'_>, b: &[u8]) -> fmt::Result {
    if b.is_empty() {
        return f.write_str("<<>>");
    }
    let plain = |c: char| matches!(c, '\n' | '\t' | '\r') || !needs_hex_escape(c);
    if b.iter().all(|&x| x.is_ascii() && plain(char::from(x))) {
        // ASCII text: each char is one byte in a Latin-1 binary string.
        f.write_str("<<\"")?;
        write_escaped(f, &String::from_utf8_lossy(b), '"')?;
        return f.write_str("\">>");
    }
    if let Ok(s) = std::str::from_utf8(b) {
        if s.chars().all(plain) {
            f.write_str("<<\"")?;
            write_escaped(f, s, '"')?;
            return f.write_str("\"/utf8>>");
        }
    }
    f.write_str("<<")?;
    for (i, x) in b.iter().enumerate() {
        if i > 0 {
            f.write_char(',')?;
        }
        write!(f, "{x}")?;
    }
    f.write_str(">>")
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Atom {
        name: String,
        quoted: bool,
    },
    Var(String),
    Str(String),
    Char(u32),
    Int(u128),
    Float(f64),
    Punct(&'static str),
    Other(char),
    /// A '.' followed by whitespace, '%' or end of input: ends a term.
    Dot,
    /// Any other '.'.
    BareDot,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
    col: usize,
}

/// Punctuation and operators, longest first so the first match is the longest.
const PUNCTS: &[&str] = &[
    "=:=", "=/=", "<<", ">>", "=>", ":=", "||", "->", "<-", "<=", "::", "==", "/=", "=<", ">=",
    "++", "--", "{", "}", "[", "]", "(", ")", ",", "|", "#", "/", ":", "-", "+", "=", "<", ">",
    "*", "!", "?", ";",
];

/// Punctuation that is an Erlang operator (only unary '-'/'+' on numbers is accepted).
const OPERATORS: &[&str] = &[
    "=:=", "=/=", "==", "/=", "=<", ">=", "++", "--", "<-", "<=", "/", "-", "+", "=", "<", ">",
    "*", "!",
];

enum EscapeError {
    /// Input ended inside the escape sequence.
    Eof,
    Invalid(ParseError),
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    col: usize,
}

fn is_ws(c: char) -> bool {
    c <= ' ' || ('\u{80}'..='\u{A0}').contains(&c) || c.is_whitespace()
}

fn is_latin1_letter(c: char) -> bool {
    ('\u{C0}'..='\u{FF}').contains(&c) && c != '\u{D7}' && c != '\u{F7}'
}

fn is_atom_start(c: char) -> bool {
    c.is_ascii_lowercase() || (is_latin1_letter(c) && c >= '\u{DF}')
}

fn is_var_start(c: char) -> bool {
    c.is_ascii_uppercase() || c == '_' || (is_latin1_letter(c) && c < '\u{DF}')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '@' || is_latin1_letter(c)
}

impl Lexer {
    fn new(src: &str) -> Self {
        let src = src.strip_prefix('\u{FEFF}').unwrap_or(src);
        Lexer {
            chars: src.chars().collect(),
            pos: 0,
            line: 1,
            col: 1,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos.saturating_add(n)).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn error(line: usize, column: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            line,
            column,
            message: message.into(),
        }
    }

    fn skip_ws_and_comments(&mut self) {
        while let Some(c) = self.peek() {
            if c == '%' {
                while let Some(c) = self.peek() {
                    if c == '\n' {
                        break;
                    }
                    self.bump();
                }
            } else if is_ws(c) {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn next_token(&mut self) -> Result<Token, ParseError> {
        self.skip_ws_and_comments();
        let (line, col) = (self.line, self.col);
        let Some(c) = self.peek() else {
            return Ok(Token {
                tok: Tok::Eof,
                line,
                col,
            });
        };
        let tok = match c {
            '0'..='9' => self.lex_number(line, col)?,
            '"' => Tok::Str(self.lex_quoted('"', line, col)?),
            '\'' => Tok::Atom {
                name: self.lex_quoted('\'', line, col)?,
                quoted: true,
            },
            '$' => self.lex_char(line, col)?,
            '.' => {
                self.bump();
                match self.peek() {
                    None => Tok::Dot,
                    Some(n) if n == '%' || is_ws(n) => Tok::Dot,
                    Some(_) => Tok::BareDot,
                }
            }
            c if is_atom_start(c) => Tok::Atom {
                name: self.lex_name(),
                quoted: false,
            },
            c if is_var_start(c) => Tok::Var(self.lex_name()),
            c => self.lex_punct(c),
        };
        Ok(Token { tok, line, col })
    }

    fn lex_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if !is_name_char(c) {
                break;
            }
            name.push(c);
            self.bump();
        }
        name
    }

    fn lex_punct(&mut self, c: char) -> Tok {
        for p in PUNCTS {
            let matches = p
                .chars()
                .enumerate()
                .all(|(i, pc)| self.peek_at(i) == Some(pc));
            if matches {
                for _ in 0..p.chars().count() {
                    self.bump();
                }
                return Tok::Punct(p);
            }
        }
        self.bump();
        Tok::Other(c)
    }

    /// Reads digits of `radix` (2..=36) with single `_` separators between digits.
    fn lex_digits(&mut self, radix: u32, out: &mut String) -> usize {
        let mut n = 0;
        loop {
            match self.peek() {
                Some(c) if c.is_digit(radix) => {
                    out.push(c);
                    self.bump();
                    n += 1;
                }
                Some('_') if n > 0 && self.peek_at(1).is_some_and(|d| d.is_digit(radix)) => {
                    self.bump();
                }
                _ => break,
            }
        }
        n
    }

    fn lex_number(&mut self, line: usize, col: usize) -> Result<Tok, ParseError> {
        let too_large = || Self::error(line, col, "integer literal too large (over 128 bits)");
        let mut digits = String::new();
        self.lex_digits(10, &mut digits);

        if self.peek() == Some('#') {
            let base = digits_value(&digits, 10).filter(|b| (2..=36).contains(b));
            let Some(base) = base.and_then(|b| u32::try_from(b).ok()) else {
                return Err(Self::error(
                    line,
                    col,
                    format!("invalid base {digits} in based integer (must be 2..36)"),
                ));
            };
            self.bump();
            let mut based = String::new();
            if self.lex_digits(base, &mut based) == 0 {
                return Err(Self::error(
                    line,
                    col,
                    format!("expected base-{base} digits after '{base}#'"),
                ));
            }
            return digits_value(&based, base)
                .map(Tok::Int)
                .ok_or_else(too_large);
        }

        if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
            let mut text = digits;
            text.push('.');
            self.lex_digits(10, &mut text);
            if matches!(self.peek(), Some('e' | 'E')) {
                let exp_follows = match self.peek_at(1) {
                    Some(c) if c.is_ascii_digit() => true,
                    Some('+' | '-') => self.peek_at(2).is_some_and(|c| c.is_ascii_digit()),
                    _ => false,
                };
                if exp_follows {
                    self.bump();
                    text.push('e');
                    if let Some(sign @ ('+' | '-')) = self.peek() {
                        text.push(sign);
                        self.bump();
                    }
                    self.lex_digits(10, &mut text);
                }
            }
            return match text.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Tok::Float(x)),
                _ => Err(Self::error(line, col, "float literal out of range")),
            };
        }

        digits_value(&digits, 10)
            .map(Tok::Int)
            .ok_or_else(too_large)
    }

    fn lex_char(&mut self, line: usize, col: usize) -> Result<Tok, ParseError> {
        self.bump(); // '$'
        let (eline, ecol) = (self.line, self.col);
        match self.bump() {
            None => Err(Self::error(
                line,
                col,
                "unexpected end of input in character literal after '$'",
            )),
            Some('\\') => match self.lex_escape(eline, ecol) {
                Ok(v) => Ok(Tok::Char(v)),
                Err(EscapeError::Eof) => Err(Self::error(
                    line,
                    col,
                    "unexpected end of input in character literal",
                )),
                Err(EscapeError::Invalid(e)) => Err(e),
            },
            Some(c) => Ok(Tok::Char(u32::from(c))),
        }
    }

    /// Reads a string or quoted atom; `line`/`col` is the opening quote.
    fn lex_quoted(&mut self, quote: char, line: usize, col: usize) -> Result<String, ParseError> {
        let what = if quote == '"' {
            "string"
        } else {
            "quoted atom"
        };
        let unterminated = || Self::error(line, col, format!("unterminated {what}"));
        self.bump(); // opening quote
        let mut out = String::new();
        loop {
            let (eline, ecol) = (self.line, self.col);
            match self.bump() {
                None => return Err(unterminated()),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => match self.lex_escape(eline, ecol) {
                    Ok(v) => match char::from_u32(v) {
                        Some(c) => out.push(c),
                        None => {
                            return Err(Self::error(
                                eline,
                                ecol,
                                format!(
                                    "escape sequence gives invalid character code {v:#X} in {what}"
                                ),
                            ))
                        }
                    },
                    Err(EscapeError::Eof) => return Err(unterminated()),
                    Err(EscapeError::Invalid(e)) => return Err(e),
                },
                Some(c) => out.push(c),
            }
        }
    }

    /// Reads an escape sequence; the backslash (at `line`/`col`) is already consumed.
    fn lex_escape(&mut self, line: usize, col: usize) -> Result<u32, EscapeError> {
        let invalid = |msg: &str| EscapeError::Invalid(Self::error(line, col, msg));
        let Some(c) = self.bump() else {
            return Err(EscapeError::Eof);
        };
        let v = match c {
            'b' => 8,
            'd' => 127,
            'e' => 27,
            'f' => 12,
            'n' => 10,
            'r' => 13,
            's' => 32,
            't' => 9,
            'v' => 11,
            '0'..='7' => {
                let mut v = u32::from(c) - u32::from('0');
                for _ in 0..2 {
                    match self.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            v = v * 8 + d;
                            self.bump();
                        }
                        None => break,
                    }
                }
                v
            }
            'x' => match self.peek() {
                None => return Err(EscapeError::Eof),
                Some('{') => {
                    self.bump();
                    let mut v: u32 = 0;
                    let mut n = 0;
                    loop {
                        match self.bump() {
                            None => return Err(EscapeError::Eof),
                            Some('}') => break,
                            Some(h) => match h.to_digit(16) {
                                Some(d) => {
                                    v = v.saturating_mul(16).saturating_add(d);
                                    if v > 0x10FFFF {
                                        return Err(invalid(
                                            "invalid escape sequence: \\x{...} is beyond the Unicode range",
                                        ));
                                    }
                                    n += 1;
                                }
                                None => {
                                    return Err(invalid(
                                        "invalid escape sequence: \\x{ must be followed by hexadecimal digits and '}'",
                                    ))
                                }
                            },
                        }
                    }
                    if n == 0 {
                        return Err(invalid("invalid escape sequence: empty \\x{}"));
                    }
                    v
                }
                Some(h1) => {
                    let d1 = h1.to_digit(16);
                    let d2 = self.peek_at(1).map(|h2| h2.to_digit(16));
                    match (d1, d2) {
                        (Some(_), None) => return Err(EscapeError::Eof),
                        (Some(d1), Some(Some(d2))) => {
                            self.bump();
                            self.bump();
                            d1 * 16 + d2
                        }
                        _ => {
                            return Err(invalid(
                                "invalid escape sequence: \\x must be followed by two hexadecimal digits or {...}",
                            ))
                        }
                    }
                }
            },
            '^' => match self.bump() {
                None => return Err(EscapeError::Eof),
                Some(c) => u32::from(c) & 31,
            },
            other => u32::from(other),
        };
        Ok(v)
    }
}

/// The value of ASCII digits in `radix` (2..=36), or None on overflow.
fn digits_value(digits: &str, radix: u32) -> Option<u128> {
    digits.chars().try_fold(0u128, |acc, c| {
        acc.checked_mul(u128::from(radix))?
            .checked_add(u128::from(c.to_digit(radix)?))
    })
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

struct Parser {
    lex: Lexer,
    peeked: Option<Token>,
}

fn error_at(t: &Token, message: impl Into<String>) -> ParseError {
    ParseError {
        line: t.line,
        column: t.col,
        message: message.into(),
    }
}

fn bare_dot_error(t: &Token) -> ParseError {
    error_at(
        t,
        "a '.' ending a term must be followed by whitespace, '%' or end of input",
    )
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Atom { name, quoted } => {
            if !quoted && is_reserved_word(name) {
                format!("reserved word '{name}'")
            } else {
                let mut s = String::from("atom '");
                let _ = write_escaped(&mut s, name, '\'');
                s.push('\'');
                s
            }
        }
        Tok::Var(v) => format!("variable {v} (variables are not allowed in a term)"),
        Tok::Str(s) => {
            let mut out = String::from("string \"");
            let short: String = s.chars().take(40).collect();
            let _ = write_escaped(&mut out, &short, '"');
            if s.chars().nth(40).is_some() {
                out.push_str("...");
            }
            out.push('"');
            out
        }
        Tok::Char(c) => match char::from_u32(*c) {
            Some(ch) if ch.is_ascii_graphic() => format!("character literal ${ch}"),
            _ => format!("character literal $\\x{{{c:X}}}"),
        },
        Tok::Int(n) => format!("integer {n}"),
        Tok::Float(x) => format!("float {}", Term::Float(*x)),
        Tok::Punct(p) if OPERATORS.contains(p) => {
            format!("'{p}' (operators are not allowed in a term)")
        }
        Tok::Punct(p) => format!("'{p}'"),
        Tok::Other(c) => {
            if c.is_control() {
                format!("unexpected character U+{:04X}", u32::from(*c))
            } else {
                format!("unexpected character '{c}'")
            }
        }
        Tok::Dot | Tok::BareDot => "'.'".to_string(),
        Tok::Eof => "end of input".to_string(),
    }
}

fn make_cons(mut elems: Vec<Term>, tail: Term) -> Term {
    match tail {
        Term::List(rest) => {
            elems.extend(rest);
            Term::List(elems)
        }
        Term::ImproperList(rest, t) => {
            elems.extend(rest);
            Term::ImproperList(elems, t)
        }
        Term::Str(s) => {
            elems.extend(s.chars().map(|c| Term::Integer(i128::from(u32::from(c)))));
            Term::List(elems)
        }
        other => Term::ImproperList(elems, Box::new(other)),
    }
}

/// A container being parsed (see [`Parser::parse_value`]).
enum Frame {
    Tuple(Vec<Term>),
    List(Vec<Term>),
    /// After the '|' of a list: the elements before it.
    ListTail(Vec<Term>),
    /// Expecting a key (or the end of the map).
    MapKey(Vec<(Term, Term)>),
    /// Expecting the value for this key.
    MapValue(Vec<(Term, Term)>, Term),
    Paren,
}

/// The start of a value: a complete one, or a container just opened.
enum Start {
    Value(Term),
    Open(Frame),
}

/// A binary segment's value before encoding.
enum Segment {
    Int(i128, Token),
    Str(String, Token),
}

impl Parser {
    fn new(src: &str) -> Self {
        Parser {
            lex: Lexer::new(src),
            peeked: None,
        }
    }

    fn peek(&mut self) -> Result<&Token, ParseError> {
        let t = match self.peeked.take() {
            Some(t) => t,
            None => self.lex.next_token()?,
        };
        Ok(self.peeked.insert(t))
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex.next_token(),
        }
    }

    fn peek_is(&mut self, p: &str) -> Result<bool, ParseError> {
        Ok(matches!(self.peek()?.tok, Tok::Punct(q) if q == p))
    }

    /// Reads a string literal's continuation: adjacent string literals concatenate.
    fn concat_strings(&mut self, mut s: String) -> Result<String, ParseError> {
        while matches!(self.peek()?.tok, Tok::Str(_)) {
            if let Tok::Str(more) = self.next()?.tok {
                s.push_str(&more);
            }
        }
        Ok(s)
    }

    /// Parses one term. Nesting is handled with an explicit stack, not recursion, so the
    /// depth limit is the only bound and no input can overflow the call stack.
    fn parse_value(&mut self) -> Result<Term, ParseError> {
        let mut stack: Vec<Frame> = Vec::new();
        'value: loop {
            let t = self.next()?;
            let mut v = match self.value_start(t, stack.len())? {
                Start::Value(v) => v,
                Start::Open(frame) => {
                    let (close, empty) = match frame {
                        Frame::Tuple(_) => ("}", Term::Tuple(Vec::new())),
                        Frame::List(_) => ("]", Term::List(Vec::new())),
                        Frame::MapKey(_) => ("}", Term::Map(Vec::new())),
                        _ => {
                            stack.push(frame);
                            continue 'value;
                        }
                    };
                    if !self.peek_is(close)? {
                        stack.push(frame);
                        continue 'value;
                    }
                    self.next()?;
                    empty
                }
            };
            // A value is complete: fold it into the enclosing containers.
            loop {
                let Some(frame) = stack.pop() else {
                    return Ok(v);
                };
                let t = self.next()?;
                let found = || describe(&t.tok);
                let sep = match &t.tok {
                    Tok::Punct(p) => *p,
                    _ => "",
                };
                match (frame, sep) {
                    (Frame::Tuple(mut items), ",") => {
                        items.push(v);
                        stack.push(Frame::Tuple(items));
                        continue 'value;
                    }
                    (Frame::Tuple(mut items), "}") => {
                        items.push(v);
                        v = Term::Tuple(items);
                    }
                    (Frame::Tuple(_), _) => {
                        return Err(error_at(
                            &t,
                            format!("expected ',' or '}}' in tuple, found {}", found()),
                        ))
                    }
                    (Frame::List(mut items), ",") => {
                        items.push(v);
                        stack.push(Frame::List(items));
                        continue 'value;
                    }
                    (Frame::List(mut items), "]") => {
                        items.push(v);
                        v = Term::List(items);
                    }
                    (Frame::List(mut items), "|") => {
                        items.push(v);
                        stack.push(Frame::ListTail(items));
                        continue 'value;
                    }
                    (Frame::List(_), _) => {
                        return Err(error_at(
                            &t,
                            format!("expected ',', '|' or ']' in list, found {}", found()),
                        ))
                    }
                    (Frame::ListTail(items), "]") => v = make_cons(items, v),
                    (Frame::ListTail(_), _) => {
                        return Err(error_at(
                            &t,
                            format!("expected ']' after list tail, found {}", found()),
                        ))
                    }
                    (Frame::MapKey(pairs), "=>") => {
                        stack.push(Frame::MapValue(pairs, v));
                        continue 'value;
                    }
                    (Frame::MapKey(_), ":=") => {
                        return Err(error_at(
                            &t,
                            "':=' is not allowed in a map literal (use '=>')",
                        ))
                    }
                    (Frame::MapKey(_), _) => {
                        return Err(error_at(
                            &t,
                            format!("expected '=>' after map key, found {}", found()),
                        ))
                    }
                    (Frame::MapValue(mut pairs, key), ",") => {
                        pairs.push((key, v));
                        stack.push(Frame::MapKey(pairs));
                        continue 'value;
                    }
                    (Frame::MapValue(mut pairs, key), "}") => {
                        pairs.push((key, v));
                        v = Term::Map(pairs);
                    }
                    (Frame::MapValue(..), _) => {
                        return Err(error_at(
                            &t,
                            format!("expected ',' or '}}' in map, found {}", found()),
                        ))
                    }
                    (Frame::Paren, ")") => {}
                    (Frame::Paren, _) => {
                        return Err(error_at(&t, format!("expected ')', found {}", found())))
                    }
                }
            }
        }
    }

    /// Interprets the first token of a value: a complete scalar, or an opened container.
    /// `depth` is the number of containers already open.
    fn value_start(&mut self, t: Token, depth: usize) -> Result<Start, ParseError> {
        let check_depth = |t: &Token| {
            if depth >= MAX_DEPTH {
                Err(error_at(
                    t,
                    format!("nesting too deep (more than {MAX_DEPTH} levels)"),
                ))
            } else {
                Ok(())
            }
        };
        let open = |frame: Frame| check_depth(&t).map(|()| Start::Open(frame));
        match &t.tok {
            Tok::Atom { name, quoted } => {
                if !quoted && is_reserved_word(name) {
                    if name == "fun" {
                        return Err(error_at(&t, "funs are not allowed in a term"));
                    }
                    return Err(error_at(
                        &t,
                        format!("expected a term, found reserved word '{name}' (quote it to use it as an atom: '{name}')"),
                    ));
                }
                let next = self.peek()?;
                if matches!(next.tok, Tok::Punct("(" | ":")) {
                    return Err(error_at(&t, "function calls are not allowed in a term"));
                }
                Ok(Start::Value(Term::Atom(name.clone())))
            }
            Tok::Var(v) => Err(error_at(
                &t,
                format!("variables are not allowed in a term (found variable {v})"),
            )),
            Tok::Str(s) => Ok(Start::Value(Term::Str(self.concat_strings(s.clone())?))),
            Tok::Char(c) => Ok(Start::Value(Term::Integer(i128::from(*c)))),
            Tok::Int(n) => i128::try_from(*n)
                .map(|v| Start::Value(Term::Integer(v)))
                .map_err(|_| error_at(&t, "integer literal too large (over 128 bits)")),
            Tok::Float(x) => Ok(Start::Value(Term::Float(*x))),
            Tok::Punct(sign @ ("-" | "+")) => {
                let negate = *sign == "-";
                let n = self.next()?;
                let v = match n.tok {
                    Tok::Int(v) => {
                        let v = if negate {
                            0i128.checked_sub_unsigned(v)
                        } else {
                            i128::try_from(v).ok()
                        };
                        v.map(Term::Integer).ok_or_else(|| {
                            error_at(&n, "integer literal too large (over 128 bits)")
                        })?
                    }
                    Tok::Char(c) => {
                        let v = i128::from(c);
                        Term::Integer(if negate { -v } else { v })
                    }
                    Tok::Float(x) => Term::Float(if negate { -x } else { x }),
                    _ => {
                        return Err(error_at(
                            &n,
                            format!(
                                "expected a number after unary '{sign}', found {} (operators are not allowed in a term)",
                                describe(&n.tok)
                            ),
                        ))
                    }
                };
                Ok(Start::Value(v))
            }
            Tok::Punct("{") => open(Frame::Tuple(Vec::new())),
            Tok::Punct("[") => open(Frame::List(Vec::new())),
            Tok::Punct("(") => open(Frame::Paren),
            Tok::Punct("<<") => {
                check_depth(&t)?;
                Ok(Start::Value(self.parse_binary()?))
            }
            Tok::Punct("#") => {
                check_depth(&t)?;
                let n = self.next()?;
                match n.tok {
                    Tok::Punct("{") => open(Frame::MapKey(Vec::new())),
                    Tok::Atom { .. } => Err(error_at(&t, "records are not allowed in a term")),
                    _ => Err(error_at(
                        &n,
                        format!("expected '{{' after '#', found {}", describe(&n.tok)),
                    )),
                }
            }
            Tok::Punct("?") => Err(error_at(&t, "macros are not allowed in a term")),
            Tok::Punct("<") => Err(error_at(
                &t,
                "expected a term, found '<' (pids, ports and references have no literal syntax)",
            )),
            Tok::Other(_) => Err(error_at(&t, describe(&t.tok))),
            other => Err(error_at(
                &t,
                format!("expected a term, found {}", describe(other)),
            )),
        }
    }

    fn parse_binary(&mut self) -> Result<Term, ParseError> {
        let mut bytes = Vec::new();
        if self.peek_is(">>")? {
            self.next()?;
            return Ok(Term::Binary(bytes));
        }
        loop {
            self.parse_segment(&mut bytes)?;
            let t = self.next()?;
            match &t.tok {
                Tok::Punct(",") => {}
                Tok::Punct(">>") => return Ok(Term::Binary(bytes)),
                other => {
                    return Err(error_at(
                        &t,
                        format!("expected ',' or '>>' in binary, found {}", describe(other)),
                    ))
                }
            }
        }
    }

    fn parse_segment(&mut self, bytes: &mut Vec<u8>) -> Result<(), ParseError> {
        let t = self.next()?;
        let seg = match &t.tok {
            Tok::Int(n) => match i128::try_from(*n) {
                Ok(v) => Segment::Int(v, t),
                Err(_) => {
                    return Err(error_at(
                        &t,
                        format!("binary segment value {n} is out of range 0..255"),
                    ))
                }
            },
            Tok::Char(c) => Segment::Int(i128::from(*c), t),
            Tok::Str(s) => Segment::Str(self.concat_strings(s.clone())?, t),
            Tok::Punct("-") => {
                let n = self.next()?;
                match &n.tok {
                    Tok::Int(v) => {
                        Segment::Int(0i128.checked_sub_unsigned(*v).unwrap_or(i128::MIN), t)
                    }
                    Tok::Char(c) => Segment::Int(-i128::from(*c), t),
                    other => {
                        return Err(error_at(
                            &n,
                            format!(
                                "expected an integer after '-' in binary segment, found {}",
                                describe(other)
                            ),
                        ))
                    }
                }
            }
            other => {
                return Err(error_at(
                    &t,
                    format!(
                        "expected an integer or string in binary segment, found {}",
                        describe(other)
                    ),
                ))
            }
        };

        let mut utf8 = false;
        if self.peek_is(":")? {
            let colon = self.next()?;
            return Err(error_at(&colon, "binary segment sizes are not supported"));
        }
        if self.peek_is("/")? {
            self.next()?;
            let ty = self.next()?;
            match &ty.tok {
                Tok::Atom { name, .. } if name == "utf8" => utf8 = true,
                Tok::Atom { name, .. } => {
                    return Err(error_at(
                        &ty,
                        format!(
                            "unsupported binary segment type '{name}' (only utf8 is supported)"
                        ),
                    ))
                }
                other => {
                    return Err(error_at(
                        &ty,
                        format!(
                            "expected a type specifier after '/' in binary segment, found {}",
                            describe(other)
                        ),
                    ))
                }
            }
        }

        match seg {
            Segment::Int(v, at) if utf8 => {
                let c = u32::try_from(v)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| {
                        error_at(
                            &at,
                            format!("invalid code point {v} in utf8 binary segment"),
                        )
                    })?;
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Segment::Int(v, at) => match u8::try_from(v) {
                Ok(b) => bytes.push(b),
                Err(_) => {
                    return Err(error_at(
                        &at,
                        format!("binary segment value {v} is out of range 0..255"),
                    ))
                }
            },
            Segment::Str(s, _) if utf8 => bytes.extend_from_slice(s.as_bytes()),
            Segment::Str(s, at) => {
                for c in s.chars() {
                    match u8::try_from(u32::from(c)) {
                        Ok(b) => bytes.push(b),
                        Err(_) => {
                            return Err(error_at(
                                &at,
                                format!(
                                    "character '{c}' (U+{:04X}) in binary string does not fit in a byte (add /utf8)",
                                    u32::from(c)
                                ),
                            ))
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str) -> Term {
        match parse_term(src) {
            Ok(t) => t,
            Err(e) => panic!("parse_term({src:?}) failed: {e}"),
        }
    }

    fn err(src: &str) -> ParseError {
        match parse_terms(src) {
            Ok(t) => panic!("parse_terms({src:?}) unexpectedly gave {t:?}"),
            Err(e) => e,
        }
    }

    fn term_err(src: &str) -> ParseError {
        match parse_term(src) {
            Ok(t) => panic!("parse_term({src:?}) unexpectedly gave {t:?}"),
            Err(e) => e,
        }
    }

    fn assert_err(e: &ParseError, line: usize, column: usize, needle: &str) {
        assert_eq!((e.line, e.column), (line, column), "position of {e}");
        assert!(
            e.message.contains(needle),
            "{e:?} should mention {needle:?}"
        );
    }

    fn a(s: &str) -> Term {
        Term::Atom(s.to_string())
    }
    fn s(s: &str) -> Term {
        Term::Str(s.to_string())
    }
    fn i(n: i128) -> Term {
        Term::Integer(n)
    }
    fn t(items: Vec<Term>) -> Term {
        Term::Tuple(items)
    }
    fn l(items: Vec<Term>) -> Term {
        Term::List(items)
    }

    // ----- atoms -----------------------------------------------------------

    #[test]
    fn unquoted_atoms() {
        assert_eq!(p("foo"), a("foo"));
        assert_eq!(p("fooBar_9@host"), a("fooBar_9@host"));
        assert_eq!(p("true"), a("true"));
        assert_eq!(p("maybe"), a("maybe"));
        assert_eq!(p("été"), a("été"));
    }

    #[test]
    fn quoted_atoms() {
        assert_eq!(p("'Hello World'"), a("Hello World"));
        assert_eq!(p("''"), a(""));
        assert_eq!(p("'end'"), a("end"));
        assert_eq!(p(r"'it\'s\n'"), a("it's\n"));
        assert_eq!(p("'%'"), a("%"));
        assert_eq!(p("'echo@host-1'"), a("echo@host-1"));
    }

    #[test]
    fn reserved_words_are_errors_unquoted() {
        assert_err(&term_err("end"), 1, 1, "reserved word 'end'");
        assert_err(&err("[a, receive]."), 1, 5, "reserved word 'receive'");
        assert_err(&err("{fun foo/1}."), 1, 2, "funs are not allowed");
    }

    #[test]
    fn unterminated_quoted_atom() {
        assert_err(&err("{a,\n 'abc}.\n"), 2, 2, "unterminated quoted atom");
    }

    // ----- variables -------------------------------------------------------

    #[test]
    fn variables_are_errors() {
        let e = err("{ok, Foo}.");
        assert_err(&e, 1, 6, "variables are not allowed in a term");
        assert_err(&err("[_]."), 1, 2, "variables are not allowed in a term");
        assert_err(
            &err("\n  _Ignored."),
            2,
            3,
            "variables are not allowed in a term",
        );
        // a digit separator must sit between digits: `1_` is 1 then the variable `_`
        assert_err(
            &term_err("1__0"),
            1,
            2,
            "variables are not allowed in a term",
        );
        assert_err(&term_err("1_"), 1, 2, "variables are not allowed in a term");
    }

    // ----- strings and escapes ---------------------------------------------

    #[test]
    fn simple_strings() {
        assert_eq!(p(r#""hello""#), s("hello"));
        assert_eq!(p(r#""""#), s(""));
        assert_eq!(p(r#""% not a comment""#), s("% not a comment"));
        assert_eq!(p("\"héllo wörld ✓\""), s("héllo wörld ✓"));
        assert_eq!(p("\"line1\nline2\""), s("line1\nline2"));
    }

    #[test]
    fn named_escapes() {
        assert_eq!(
            p(r#""\b\d\e\f\n\r\s\t\v\'\"\\""#),
            s("\u{8}\u{7f}\u{1b}\u{c}\n\r \t\u{b}'\"\\")
        );
    }

    #[test]
    fn octal_hex_control_and_unknown_escapes() {
        assert_eq!(p(r#""\7\17\177\1011""#), s("\u{7}\u{f}\u{7f}A1"));
        assert_eq!(p(r#""\0""#), s("\0"));
        assert_eq!(p(r#""\8""#), s("8"));
        assert_eq!(p(r#""\x41\x4a\x{42}\x{1F600}\x{e9}""#), s("AJB😀é"));
        assert_eq!(p(r#""\^a\^Z\^@""#), s("\u{1}\u{1a}\0"));
        assert_eq!(p(r#""\q\z""#), s("qz"));
        assert_eq!(p(r"'\x41\101\^b'"), a("AA\u{2}"));
    }

    #[test]
    fn bad_escapes() {
        assert_err(&err(r#""a\x{zz}"."#), 1, 3, "invalid escape");
        assert_err(&err(r#"["ok", "\x4g"]."#), 1, 9, "invalid escape");
        assert_err(&err(r#""\x{}"."#), 1, 2, "empty");
        assert_err(&err(r#""\x{110000}"."#), 1, 2, "Unicode");
        assert_err(&err(r#""\x{D800}"."#), 1, 2, "invalid character code");
        assert_err(&err("'\\x{zz}'."), 1, 2, "invalid escape");
    }

    #[test]
    fn adjacent_strings_concatenate() {
        assert_eq!(p(r#""ab" "cd""#), s("abcd"));
        assert_eq!(p("\"ab\" % comment\n  \"cd\"\"ef\""), s("abcdef"));
        assert_eq!(p(r#"{"a" "b", "c"}"#), t(vec![s("ab"), s("c")]));
    }

    #[test]
    fn unterminated_string() {
        let e = err("{ok,\n    \"abc}.\n");
        assert_err(&e, 2, 5, "unterminated string");
        assert_eq!(e.to_string(), "2:5: unterminated string");
        assert_err(&err("\"abc\\"), 1, 1, "unterminated string");
        assert_err(&err("\"abc\\x{4"), 1, 1, "unterminated string");
        assert_err(&err("\"abc\\x4"), 1, 1, "unterminated string");
    }

    // ----- characters ------------------------------------------------------

    #[test]
    fn char_literals() {
        assert_eq!(p("$a"), i(97));
        assert_eq!(p(r"$\n"), i(10));
        assert_eq!(p("$%"), i(37));
        assert_eq!(p("$ "), i(32));
        assert_eq!(p(r"$\s"), i(32));
        assert_eq!(p(r"$\x{1F600}"), i(0x1F600));
        assert_eq!(p(r"$\x{D800}"), i(0xD800));
        assert_eq!(p(r"$\^A"), i(1));
        assert_eq!(p(r"$\^z"), i(26));
        assert_eq!(p(r"$\101"), i(65));
        assert_eq!(p(r"$\\"), i(92));
        assert_eq!(p("$é"), i(233));
        assert_eq!(p("-$a"), i(-97));
        assert_eq!(p("[$a,$%]"), l(vec![i(97), i(37)]));
        assert_err(&term_err("$"), 1, 1, "end of input");
        assert_err(&term_err("$\\"), 1, 1, "end of input");
    }

    // ----- integers --------------------------------------------------------

    #[test]
    fn integers() {
        assert_eq!(p("42"), i(42));
        assert_eq!(p("-7"), i(-7));
        assert_eq!(p("+7"), i(7));
        assert_eq!(p("- 5"), i(-5));
        assert_eq!(p("0"), i(0));
        assert_eq!(p("007"), i(7));
        assert_eq!(p("1_000_000"), i(1_000_000));
        assert_eq!(p("16#ff"), i(255));
        assert_eq!(p("16#FF"), i(255));
        assert_eq!(p("16#ff_ff"), i(0xffff));
        assert_eq!(p("2#1010"), i(10));
        assert_eq!(p("8#777"), i(511));
        assert_eq!(p("36#Zz"), i(35 * 36 + 35));
        assert_eq!(p("-16#10"), i(-16));
        assert_eq!(p(&i128::MAX.to_string()), i(i128::MAX));
        assert_eq!(p(&i128::MIN.to_string()), i(i128::MIN));
    }

    #[test]
    fn integer_errors() {
        assert_err(
            &term_err("170141183460469231731687303715884105728"),
            1,
            1,
            "too large",
        );
        assert_err(
            &term_err("-170141183460469231731687303715884105729"),
            1,
            2,
            "too large",
        );
        assert_err(
            &term_err("999999999999999999999999999999999999999999"),
            1,
            1,
            "too large",
        );
        assert_err(&term_err("[37#1]"), 1, 2, "invalid base");
        assert_err(&term_err("1#0"), 1, 1, "invalid base");
        assert_err(&term_err("16#"), 1, 1, "expected base-16 digits");
        assert_err(&term_err("2#2"), 1, 1, "expected base-2 digits");
        assert_err(&term_err("- a"), 1, 3, "expected a number after unary '-'");
        assert_err(&term_err("1 + 2"), 1, 3, "operators are not allowed");
    }

    // ----- floats ----------------------------------------------------------

    #[test]
    fn floats() {
        assert_eq!(p("1.0"), Term::Float(1.0));
        assert_eq!(p("-2.5e3"), Term::Float(-2500.0));
        assert_eq!(p("1.0e-10"), Term::Float(1.0e-10));
        assert_eq!(p("1.5E-3"), Term::Float(1.5e-3));
        assert_eq!(p("2.0e+5"), Term::Float(2.0e5));
        assert_eq!(p("1_0.2_5"), Term::Float(10.25));
        assert_eq!(p("0.1"), Term::Float(0.1));
        assert_eq!(p("1.0e-400"), Term::Float(0.0));
        assert_err(&term_err("1.0e999"), 1, 1, "float literal out of range");
    }

    #[test]
    fn dot_after_integer() {
        assert_eq!(parse_terms("1."), Ok(vec![i(1)]));
        assert_eq!(parse_terms("1.\n2.\t3.%x"), Ok(vec![i(1), i(2), i(3)]));
        assert_eq!(p("1."), i(1));
        let e = err("1.e5.");
        assert_err(&e, 1, 2, "must be followed by whitespace");
        assert_err(&term_err("1.e5"), 1, 2, "must be followed by whitespace");
        // `1.5e` is the float 1.5 followed by the atom `e`
        assert_err(&term_err("1.5e"), 1, 4, "found atom 'e'");
    }

    // ----- terminators -----------------------------------------------------

    #[test]
    fn terminators() {
        assert_eq!(
            parse_terms("a. b.\n{c}."),
            Ok(vec![a("a"), a("b"), t(vec![a("c")])])
        );
        assert_eq!(parse_terms("a.% comment"), Ok(vec![a("a")]));
        assert_err(&err("a.b."), 1, 2, "must be followed by whitespace");
        assert_err(&err(". "), 1, 1, "expected a term, found '.'");
        assert_eq!(p("foo.  % trailing\n"), a("foo"));
        assert_err(
            &term_err("foo. bar."),
            1,
            6,
            "expected end of input after term",
        );
        assert_err(&term_err("foo bar"), 1, 5, "found atom 'bar'");
    }

    #[test]
    fn missing_dot() {
        let e = err("{a,b}\n{c,d}.");
        assert_err(&e, 2, 1, "expected '.' after term, found '{'");
        assert_err(
            &err("{a,b}"),
            1,
            6,
            "expected '.' after term, found end of input",
        );
        assert_err(&err("{a,b}\n"), 2, 1, "found end of input");
    }

    #[test]
    fn unbalanced_brackets() {
        assert_err(
            &err("[a, {b, c]."),
            1,
            10,
            "expected ',' or '}' in tuple, found ']'",
        );
        assert_err(&err("{a, b}}."), 1, 7, "expected '.' after term, found '}'");
        assert_err(
            &err("[a, b"),
            1,
            6,
            "expected ',', '|' or ']' in list, found end of input",
        );
        assert_err(&err("[a, b\n\n"), 3, 1, "found end of input");
        assert_err(
            &err("#{a => 1]."),
            1,
            9,
            "expected ',' or '}' in map, found ']'",
        );
        assert_err(
            &err("<<1, 2}."),
            1,
            7,
            "expected ',' or '>>' in binary, found '}'",
        );
        assert_err(&err("(a]."), 1, 3, "expected ')'");
        assert_err(&err("]."), 1, 1, "expected a term, found ']'");
        let e = err("\n\n{aa, b, c, d foo}.");
        assert_eq!(
            e.to_string(),
            "3:14: expected ',' or '}' in tuple, found atom 'foo'"
        );
    }

    #[test]
    fn columns_count_chars() {
        assert_err(&err("{\"é\", X}."), 1, 7, "variable");
        assert_err(&err("\t{\"日本\",\tX}."), 1, 9, "variable");
    }

    // ----- compound terms --------------------------------------------------

    #[test]
    fn tuples_and_lists() {
        assert_eq!(p("{}"), t(vec![]));
        assert_eq!(p("[]"), l(vec![]));
        assert_eq!(
            p("{a, {b, []}}"),
            t(vec![a("a"), t(vec![a("b"), l(vec![])])])
        );
        assert_eq!(p("[a,b , c ]"), l(vec![a("a"), a("b"), a("c")]));
        assert_err(&term_err("[a,]"), 1, 4, "expected a term, found ']'");
        assert_err(&term_err("{a,,b}"), 1, 4, "expected a term, found ','");
    }

    #[test]
    fn improper_lists() {
        assert_eq!(
            p("[a | b]"),
            Term::ImproperList(vec![a("a")], Box::new(a("b")))
        );
        assert_eq!(
            p("[a, b | {c}]"),
            Term::ImproperList(vec![a("a"), a("b")], Box::new(t(vec![a("c")])))
        );
        assert_eq!(p("[a | [b, c]]"), l(vec![a("a"), a("b"), a("c")]));
        assert_eq!(p("[a | []]"), l(vec![a("a")]));
        assert_eq!(p("[a | \"bc\"]"), l(vec![a("a"), i(98), i(99)]));
        assert_eq!(
            p("[a | [b | c]]"),
            Term::ImproperList(vec![a("a"), a("b")], Box::new(a("c")))
        );
        assert_err(&term_err("[| b]"), 1, 2, "expected a term, found '|'");
        assert_err(
            &term_err("[a | b, c]"),
            1,
            7,
            "expected ']' after list tail",
        );
        assert_err(&term_err("[a || b]"), 1, 4, "found '||'");
    }

    #[test]
    fn maps() {
        assert_eq!(p("#{}"), Term::Map(vec![]));
        assert_eq!(
            p(r#"#{a => 1, "k" => [x]}"#),
            Term::Map(vec![(a("a"), i(1)), (s("k"), l(vec![a("x")]))])
        );
        // source order is kept
        assert_eq!(
            p("#{z => 1, a => 2}"),
            Term::Map(vec![(a("z"), i(1)), (a("a"), i(2))])
        );
        assert_eq!(
            p("#{#{} => <<>>}"),
            Term::Map(vec![(Term::Map(vec![]), Term::Binary(vec![]))])
        );
        assert_err(&err("#{a := 1}."), 1, 5, "':=' is not allowed");
        assert_err(
            &err("#{a, b}."),
            1,
            4,
            "expected '=>' after map key, found ','",
        );
        // `#` and `{` are separate tokens in Erlang too
        assert_eq!(p("# {}"), Term::Map(vec![]));
        assert_err(&err("#[]."), 1, 2, "expected '{' after '#'");
    }

    #[test]
    fn binaries() {
        assert_eq!(p("<<>>"), Term::Binary(vec![]));
        assert_eq!(p(r#"<<"abc">>"#), Term::Binary(b"abc".to_vec()));
        assert_eq!(p("<<1,2,3>>"), Term::Binary(vec![1, 2, 3]));
        assert_eq!(p(r#"<<"a", 0, "b">>"#), Term::Binary(b"a\0b".to_vec()));
        assert_eq!(p(r#"<<"ab" "cd">>"#), Term::Binary(b"abcd".to_vec()));
        assert_eq!(p("<<$a, $\\n, 255>>"), Term::Binary(vec![97, 10, 255]));
        assert_eq!(p(r#"<<"é"/utf8>>"#), Term::Binary(vec![0xC3, 0xA9]));
        assert_eq!(p(r#"<<"é">>"#), Term::Binary(vec![0xE9]));
        assert_eq!(
            p("<<1024/utf8, 65/utf8>>"),
            Term::Binary(vec![0xD0, 0x80, 65])
        );
        assert_eq!(
            p(r#"<<"\x{1F600}"/utf8>>"#),
            Term::Binary("😀".as_bytes().to_vec())
        );
        assert_eq!(p("<<-0>>"), Term::Binary(vec![0]));
        assert_eq!(
            p("[<<1>>,<<>>]"),
            l(vec![Term::Binary(vec![1]), Term::Binary(vec![])])
        );
    }

    #[test]
    fn binary_errors() {
        assert_err(
            &err("<<256>>."),
            1,
            3,
            "binary segment value 256 is out of range 0..255",
        );
        assert_err(&err("<<1, -1>>."), 1, 6, "out of range");
        assert_err(
            &err("<<170141183460469231731687303715884105728>>."),
            1,
            3,
            "out of range",
        );
        assert_err(
            &err("<<999999999999999999999999999999999999999999>>."),
            1,
            3,
            "too large",
        );
        assert_err(&err(r#"<<"ā">>."#), 1, 3, "does not fit in a byte");
        assert_err(&err("<<1:8>>."), 1, 4, "sizes are not supported");
        assert_err(
            &err(r#"<<"a"/binary>>."#),
            1,
            7,
            "unsupported binary segment type 'binary'",
        );
        assert_err(
            &err("<<a>>."),
            1,
            3,
            "expected an integer or string in binary segment",
        );
        assert_err(&err("<<1 2>>."), 1, 5, "expected ',' or '>>' in binary");
        assert_err(&err("<<16#110000/utf8>>."), 1, 3, "invalid code point");
        assert_err(&err("<<<<1>>>>."), 1, 3, "expected an integer or string");
    }

    #[test]
    fn other_syntax_is_rejected() {
        assert_err(&err("#rec{a = 1}."), 1, 1, "records are not allowed");
        assert_err(&err("{pid, <0.1.0>}."), 1, 7, "pids, ports and references");
        assert_err(&err("foo(1)."), 1, 1, "function calls are not allowed");
        assert_err(
            &err("lists:reverse([])."),
            1,
            1,
            "function calls are not allowed",
        );
        assert_err(&err("?MODULE."), 1, 1, "macros are not allowed");
        assert_err(&err("{a, 1 * 2}."), 1, 7, "operators are not allowed");
        assert_err(&err("{a, ~}."), 1, 5, "unexpected character '~'");
        assert_err(&err("{a, 日本}."), 1, 5, "unexpected character '日'");
        assert_err(&err("a = 1."), 1, 3, "operators are not allowed");
        assert_eq!(p("({a})"), t(vec![a("a")]));
        assert_eq!(p("[(1), ((a))]"), l(vec![i(1), a("a")]));
        assert_err(&term_err("-(2)"), 1, 2, "expected a number after unary '-'");
        assert_err(&term_err("()"), 1, 2, "expected a term, found ')'");
    }

    // ----- comments, BOM ---------------------------------------------------

    #[test]
    fn comments() {
        assert_eq!(
            parse_terms("% c\n[a, % c2\n b]. % c3\n%% end"),
            Ok(vec![l(vec![a("a"), a("b")])])
        );
        assert_eq!(
            p(r#"{$%, "%", '%'} % tail"#),
            t(vec![i(37), s("%"), a("%")])
        );
        assert_eq!(parse_terms("%% only a comment"), Ok(vec![]));
    }

    #[test]
    fn bom_and_coding_comment() {
        assert_eq!(
            parse_terms("\u{FEFF}%% coding: utf-8\nfoo."),
            Ok(vec![a("foo")])
        );
        assert_err(&err("\u{FEFF}Foo."), 1, 1, "variables");
    }

    #[test]
    fn empty_input() {
        assert_eq!(parse_terms(""), Ok(vec![]));
        assert_eq!(parse_terms("  \n\t "), Ok(vec![]));
        let e = term_err("");
        assert_err(&e, 1, 1, "expected a term, found end of input");
        assert_err(&term_err("\n% nothing\n"), 3, 1, "found end of input");
        assert_err(&term_err("."), 1, 1, "expected a term");
    }

    // ----- nesting ---------------------------------------------------------

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = "[".repeat(10_000);
        assert_err(&err(&src), 1, 513, "nesting too deep");
        let src = format!("{}.", "{".repeat(10_000));
        assert_err(&term_err(&src), 1, 513, "nesting too deep");
        let src = "#{a => ".repeat(2_000);
        assert_err(&term_err(&src), 1, 7 * 512 + 1, "nesting too deep");
        let src = "(".repeat(10_000);
        assert_err(&term_err(&src), 1, 513, "nesting too deep");
        let src = "[a|".repeat(10_000);
        assert_err(&term_err(&src), 1, 3 * 512 + 1, "nesting too deep");
    }

    #[test]
    fn nesting_up_to_the_limit_is_fine() {
        let src = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let mut term = p(&src);
        let mut depth = 0;
        while let Term::List(mut items) = term {
            depth += 1;
            term = items.pop().unwrap_or(Term::Integer(0));
        }
        assert_eq!(depth, MAX_DEPTH);
        let nested = format!("{}{}", "{".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(parse_term(&nested).map(|t| t.to_string()), Ok(nested));
    }

    // ----- accessors -------------------------------------------------------

    #[test]
    fn accessors() {
        assert_eq!(a("x").as_atom(), Some("x"));
        assert_eq!(s("x").as_atom(), None);
        assert_eq!(s("héllo").as_string(), Some("héllo".to_string()));
        assert_eq!(p("[104, $i]").as_string(), Some("hi".to_string()));
        assert_eq!(p("[]").as_string(), Some(String::new()));
        assert_eq!(p("[104, -1]").as_string(), None);
        assert_eq!(p("[16#D800]").as_string(), None);
        assert_eq!(p("[a]").as_string(), None);
        assert_eq!(a("abc").as_string(), None);
        assert_eq!(p("<<\"abc\">>").as_string(), None);
        assert_eq!(p("{a, 1}").as_tuple(), Some(&[a("a"), i(1)][..]));
        assert_eq!(p("[a]").as_tuple(), None);
        assert_eq!(p("[a]").as_list(), Some(&[a("a")][..]));
        assert_eq!(s("abc").as_list(), None);
        assert_eq!(p("[a | b]").as_list(), None);
        assert_eq!(p("-3").as_integer(), Some(-3));
        assert_eq!(p("3.0").as_integer(), None);
    }

    #[test]
    fn proplist_get() {
        let pl = p("[verbose, {x}, {'port', 80}, {port, 81}, {name, \"n\", extra}]");
        assert_eq!(pl.get("port"), Some(&i(80)));
        assert_eq!(pl.get("name"), Some(&s("n")));
        assert_eq!(pl.get("x"), None);
        assert_eq!(pl.get("verbose"), None);
        assert_eq!(pl.get("missing"), None);
        assert_eq!(p("{port, 80}").get("port"), None);
        assert_eq!(p("#{port => 80}").get("port"), None);
    }

    // ----- real-world samples ----------------------------------------------

    const RELEASES: &str = r#"%% coding: utf-8
[{release,"echo","0.1.0","13.1.5",
          [{kernel,"8.5.3","./lib/kernel-8.5.3"},
           {stdlib,"4.2","./lib/stdlib-4.2"},
           {echo,"0.1.0","./lib/echo-0.1.0"},
           {sasl,"4.2","./lib/sasl-4.2"}],
          permanent}].
"#;

    const REL: &str = r#"{release,{"echo","0.1.0"},
         {erts,"13.1.5"},
         [{kernel,"8.5.3"},{stdlib,"4.2"},{echo,"0.1.0"},{sasl,"4.2"}]}.
"#;

    const SYS_CONFIG: &str = r#"%% -*- mode: erlang -*-
%% sys.config for echo
[
 {kernel, [
   {logger_level, info},
   {logger, [{handler, default, logger_std_h,
              #{config => #{file => "log/erlang.log"},
                formatter => {logger_formatter, #{single_line => true}}}}]}
 ]},
 {echo, [
   {port, 8080},                 % listening port
   {'Bind-Address', "0.0.0.0"},
   {secret, <<"s3cr3t">>},
   {raw, <<1,2,3,255>>},
   {greeting, <<"héllo"/utf8>>},
   {ratio, 0.75},
   {limits, #{max_conn => 16#400, "timeout" => 5_000}},
   {nodes, ['echo@host-1', 'echo@host-2']},
   {empty, []},
   {flags, [verbose, {debug, false}]}
 ]}
].
"#;

    const APP: &str = r#"{application, echo,
 [{description, "An echo server"},
  {vsn, "0.1.0"},
  {registered, []},
  {mod, {echo_app, []}},
  {applications, [kernel, stdlib]},
  {env, [{port, 8080}]},
  {modules, [echo_app, echo_sup]},
  {licenses, ["Apache-2.0"]},
  {links, []}
 ]}.
"#;

    const REBAR_CONFIG: &str = r#"{erl_opts, [debug_info, {i, "include"}]}.
{deps, [{cowboy, "2.10.0"},
        {jsx, {git, "https://github.com/talentdeficit/jsx.git", {tag, "v3.1.0"}}}]}.

{relx, [{release, {echo, "0.1.0"}, [echo, sasl]},
        {mode, prod},
        {sys_config, "./config/sys.config"},
        {vm_args, "./config/vm.args"}]}.
"#;

    const SCRIPT: &str = r#"%% script generated at {2023,1,1} {12,0,0}
{script,{"echo","0.1.0"},
        [{preLoaded,[erl_prim_loader,erl_init,erts_internal]},
         {progress,preloaded},
         {path,["$ROOT/lib/kernel-8.5.3/ebin","$ROOT/lib/stdlib-4.2/ebin"]},
         {primLoad,[error_handler,application]},
         {kernel_load_completed},
         {progress,kernel_load_completed},
         {apply,{application,load,
                             [{application,kernel,
                                           [{description,"ERTS  CXC 138 10"},
                                            {vsn,"8.5.3"}]}]}},
         {apply,{c,erlangrc,[]}},
         {progress,started}]}.
"#;

    #[test]
    fn releases_file() {
        let terms = parse_terms(RELEASES).expect("RELEASES parses");
        assert_eq!(terms.len(), 1);
        let rels = terms[0].as_list().expect("a list");
        assert_eq!(rels.len(), 1);
        let rel = rels[0].as_tuple().expect("a tuple");
        assert_eq!(rel.len(), 6);
        assert_eq!(rel[0].as_atom(), Some("release"));
        assert_eq!(rel[1].as_string().as_deref(), Some("echo"));
        assert_eq!(rel[2].as_string().as_deref(), Some("0.1.0"));
        assert_eq!(rel[3].as_string().as_deref(), Some("13.1.5"));
        let apps = rel[4].as_list().expect("apps");
        assert_eq!(apps.len(), 4);
        assert_eq!(
            apps[2],
            t(vec![a("echo"), s("0.1.0"), s("./lib/echo-0.1.0")])
        );
        assert_eq!(rel[5], a("permanent"));
        assert_eq!(parse_term(RELEASES).as_ref(), Ok(&terms[0]));
    }

    #[test]
    fn rel_file() {
        let terms = parse_terms(REL).expect("rel parses");
        assert_eq!(
            terms,
            vec![t(vec![
                a("release"),
                t(vec![s("echo"), s("0.1.0")]),
                t(vec![a("erts"), s("13.1.5")]),
                l(vec![
                    t(vec![a("kernel"), s("8.5.3")]),
                    t(vec![a("stdlib"), s("4.2")]),
                    t(vec![a("echo"), s("0.1.0")]),
                    t(vec![a("sasl"), s("4.2")]),
                ]),
            ])]
        );
    }

    #[test]
    fn sys_config() {
        let cfg = p(SYS_CONFIG);
        let kernel = cfg.get("kernel").expect("kernel");
        assert_eq!(kernel.get("logger_level"), Some(&a("info")));
        let logger = kernel
            .get("logger")
            .and_then(Term::as_list)
            .expect("logger");
        let handler = logger[0].as_tuple().expect("handler tuple");
        assert_eq!(handler.len(), 4);
        assert_eq!(
            handler[3],
            Term::Map(vec![
                (
                    a("config"),
                    Term::Map(vec![(a("file"), s("log/erlang.log"))])
                ),
                (
                    a("formatter"),
                    t(vec![
                        a("logger_formatter"),
                        Term::Map(vec![(a("single_line"), a("true"))])
                    ])
                ),
            ])
        );
        let echo = cfg.get("echo").expect("echo");
        assert_eq!(echo.get("port"), Some(&i(8080)));
        assert_eq!(echo.get("Bind-Address"), Some(&s("0.0.0.0")));
        assert_eq!(echo.get("secret"), Some(&Term::Binary(b"s3cr3t".to_vec())));
        assert_eq!(echo.get("raw"), Some(&Term::Binary(vec![1, 2, 3, 255])));
        assert_eq!(
            echo.get("greeting"),
            Some(&Term::Binary("héllo".as_bytes().to_vec()))
        );
        assert_eq!(echo.get("ratio"), Some(&Term::Float(0.75)));
        assert_eq!(
            echo.get("limits"),
            Some(&Term::Map(vec![
                (a("max_conn"), i(1024)),
                (s("timeout"), i(5000))
            ]))
        );
        assert_eq!(
            echo.get("nodes"),
            Some(&l(vec![a("echo@host-1"), a("echo@host-2")]))
        );
        assert_eq!(echo.get("empty"), Some(&l(vec![])));
        assert_eq!(
            echo.get("flags").and_then(|f| f.get("debug")),
            Some(&a("false"))
        );
        // printing and reading back gives the same term
        assert_eq!(parse_term(&cfg.to_string()), Ok(cfg.clone()));
        assert_eq!(parse_terms(&format!("{cfg}.\n")), Ok(vec![cfg]));
    }

    #[test]
    fn app_rebar_and_script_files() {
        let app = p(APP);
        let app = app.as_tuple().expect("tuple");
        assert_eq!(app[1], a("echo"));
        assert_eq!(app[2].get("vsn"), Some(&s("0.1.0")));
        assert_eq!(
            app[2].get("applications"),
            Some(&l(vec![a("kernel"), a("stdlib")]))
        );
        assert_eq!(
            app[2].get("env").and_then(|e| e.get("port")),
            Some(&i(8080))
        );

        let rebar = parse_terms(REBAR_CONFIG).expect("rebar.config");
        assert_eq!(rebar.len(), 3);
        let relx = rebar[2].as_tuple().expect("relx");
        assert_eq!(relx[1].get("mode"), Some(&a("prod")));
        assert_eq!(
            relx[1].get("release"),
            Some(&t(vec![a("echo"), s("0.1.0")]))
        );

        let script = parse_terms(SCRIPT).expect("script");
        let script = script[0].as_tuple().expect("tuple");
        assert_eq!(script[0], a("script"));
        let steps = script[2].as_list().expect("steps");
        assert_eq!(steps[4], t(vec![a("kernel_load_completed")]));
        assert_eq!(steps[0].as_tuple().map(|x| x.len()), Some(2));
        assert_eq!(
            steps[2]
                .as_tuple()
                .and_then(|x| x[1].as_list())
                .map(|x| x.len()),
            Some(2)
        );
    }

    #[test]
    fn real_world_samples_round_trip() {
        for src in [RELEASES, REL, SYS_CONFIG, APP, REBAR_CONFIG, SCRIPT] {
            let terms = parse_terms(src).expect("sample parses");
            let printed: String = terms.iter().map(|t| format!("{t}.\n")).collect();
            assert_eq!(parse_terms(&printed), Ok(terms));
        }
    }

    // ----- printing --------------------------------------------------------

    #[test]
    fn display_atoms() {
        for (atom, printed) in [
            ("foo", "foo"),
            ("foo_Bar@baz9", "foo_Bar@baz9"),
            ("Hello", "'Hello'"),
            ("a b", "'a b'"),
            ("", "''"),
            ("end", "'end'"),
            ("receive", "'receive'"),
            ("case", "'case'"),
            ("maybe", "'maybe'"),
            ("_x", "'_x'"),
            ("9a", "'9a'"),
            ("été", "'été'"),
            ("it's", r"'it\'s'"),
            ("a\\b", r"'a\\b'"),
            ("a\"b", "'a\"b'"),
            ("tab\there", r"'tab\there'"),
            ("echo@host-1", "'echo@host-1'"),
        ] {
            assert_eq!(a(atom).to_string(), printed, "atom {atom:?}");
        }
    }

    #[test]
    fn display_strings() {
        assert_eq!(s("abc").to_string(), r#""abc""#);
        assert_eq!(
            s("a\"b\\c\nd\te\r\u{1}\u{7f}").to_string(),
            r#""a\"b\\c\nd\te\r\x01\x7F""#
        );
        assert_eq!(s("it's").to_string(), r#""it's""#);
        assert_eq!(s("héllo ✓").to_string(), "\"héllo ✓\"");
        assert_eq!(
            s("\u{85}\u{2028}\u{feff}").to_string(),
            r#""\x85\x{2028}\x{FEFF}""#
        );
        assert_eq!(s("\u{1}a").to_string(), r#""\x01a""#);
    }

    #[test]
    fn display_numbers() {
        assert_eq!(i(-42).to_string(), "-42");
        assert_eq!(i(i128::MIN).to_string(), i128::MIN.to_string());
        for (x, printed) in [
            (1.0, "1.0"),
            (-2500.0, "-2500.0"),
            (0.1, "0.1"),
            (2.5e-10, "2.5e-10"),
            (1.0e-10, "1.0e-10"),
            (1.0e300, "1.0e300"),
            (1.5e16, "1.5e16"),
            (-0.0, "-0.0"),
            (5e-324, "5.0e-324"),
        ] {
            assert_eq!(Term::Float(x).to_string(), printed);
        }
        assert_eq!(Term::Float(f64::INFINITY).to_string(), "1.0e999");
        assert!(parse_term(&Term::Float(f64::INFINITY).to_string()).is_err());
        assert!(parse_term(&Term::Float(f64::NAN).to_string()).is_err());
    }

    #[test]
    fn display_binaries() {
        assert_eq!(Term::Binary(vec![]).to_string(), "<<>>");
        assert_eq!(Term::Binary(b"abc".to_vec()).to_string(), r#"<<"abc">>"#);
        assert_eq!(
            Term::Binary(b"a \"q\"\n".to_vec()).to_string(),
            r#"<<"a \"q\"\n">>"#
        );
        assert_eq!(Term::Binary(vec![1, 2, 3]).to_string(), "<<1,2,3>>");
        assert_eq!(Term::Binary(vec![0xE9]).to_string(), "<<233>>");
        assert_eq!(
            Term::Binary("héllo".as_bytes().to_vec()).to_string(),
            "<<\"héllo\"/utf8>>"
        );
        assert_eq!(Term::Binary(b"a\0b".to_vec()).to_string(), "<<97,0,98>>");
    }

    #[test]
    fn display_compound() {
        assert_eq!(p("{a, [1, 2], {}}").to_string(), "{a,[1,2],{}}");
        assert_eq!(p("[a, b | c]").to_string(), "[a,b|c]");
        assert_eq!(
            p(r#"#{a => 1, "k" => [x]}"#).to_string(),
            r#"#{a => 1,"k" => [x]}"#
        );
        assert_eq!(
            Term::ImproperList(vec![], Box::new(a("t"))).to_string(),
            "t"
        );
        assert_eq!(p("[-1, {-2.5}]").to_string(), "[-1,{-2.5}]");
    }

    #[test]
    fn error_display_format() {
        let e = ParseError {
            line: 3,
            column: 14,
            message: "boom".into(),
        };
        assert_eq!(e.to_string(), "3:14: boom");
    }

    // ----- round trips -----------------------------------------------------

    fn handmade_terms() -> Vec<Term> {
        vec![
            a("ok"),
            a("Hello"),
            a("a b"),
            a(""),
            a("end"),
            a("quote'and\\slash"),
            a("ünïcödé ✓"),
            s(""),
            s("plain"),
            s("esc \" \\ \n \t \r \u{0} \u{1b} \u{7f} \u{9f}"),
            s("😀 日本 é"),
            Term::Binary(vec![]),
            Term::Binary(b"text".to_vec()),
            Term::Binary((0..=255).collect()),
            Term::Binary("ünï".as_bytes().to_vec()),
            i(0),
            i(-1),
            i(i128::MAX),
            i(i128::MIN),
            Term::Float(0.0),
            Term::Float(-0.5),
            Term::Float(1.0e-300),
            Term::Float(f64::MAX),
            Term::Float(f64::MIN_POSITIVE),
            Term::Float(123_456_789.123_456_79),
            t(vec![]),
            l(vec![]),
            t(vec![a("a"), l(vec![i(1), s("x")]), t(vec![])]),
            Term::ImproperList(vec![i(1), i(2)], Box::new(a("tail"))),
            Term::ImproperList(vec![a("x")], Box::new(t(vec![l(vec![])]))),
            Term::Map(vec![]),
            Term::Map(vec![
                (a("k"), i(1)),
                (s("s"), Term::Binary(b"v".to_vec())),
                (Term::Map(vec![]), l(vec![Term::Float(2.5)])),
            ]),
            l(vec![
                i(-5),
                Term::Float(-1.0e10),
                Term::Map(vec![(i(-1), i(-2))]),
            ]),
            p(SYS_CONFIG),
        ]
    }

    #[test]
    fn handmade_round_trip() {
        let terms = handmade_terms();
        assert!(terms.len() >= 30);
        for term in terms {
            let printed = term.to_string();
            assert_eq!(
                parse_term(&printed),
                Ok(term.clone()),
                "printed as {printed}"
            );
            assert_eq!(parse_terms(&format!("{printed}.")), Ok(vec![term]));
        }
    }

    /// xorshift64: a small deterministic pseudo-random generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    fn gen_char(r: &mut Rng) -> char {
        let code = match r.below(7) {
            0 | 1 => 0x20 + r.below(0x5F) as u32,
            2 => r.below(0x20) as u32,
            3 => *r.pick(&['"', '\'', '\\', '%', '$', '.', '{', '\n']) as u32,
            4 => 0x7F + r.below(0x81) as u32,
            5 => r.below(0x1_0000) as u32,
            _ => r.below(0x11_0000) as u32,
        };
        char::from_u32(code).unwrap_or('x')
    }

    fn gen_string(r: &mut Rng) -> String {
        let n = r.below(8);
        (0..n).map(|_| gen_char(r)).collect()
    }

    fn gen_atom(r: &mut Rng) -> String {
        match r.below(4) {
            0 => r
                .pick(&["ok", "error", "foo_bar", "a@b", "true", "x9"])
                .to_string(),
            1 => r.pick(RESERVED_WORDS).to_string(),
            2 => r
                .pick(&["Foo", "_", "with space", "", "maybe", "else"])
                .to_string(),
            _ => gen_string(r),
        }
    }

    fn gen_leaf(r: &mut Rng) -> Term {
        match r.below(7) {
            0 => Term::Atom(gen_atom(r)),
            1 => Term::Str(gen_string(r)),
            2 => {
                let n = r.below(10) as usize;
                Term::Binary(match r.below(3) {
                    0 => (0..n).map(|_| r.next() as u8).collect(),
                    1 => (0..n).map(|_| b'a' + r.below(26) as u8).collect(),
                    _ => gen_string(r).into_bytes(),
                })
            }
            3 => Term::Integer(match r.below(4) {
                0 => r.below(1000) as i128 - 500,
                1 => *r.pick(&[0, 1, -1, 255, 256, i128::MAX, i128::MIN, i128::MIN + 1]),
                2 => r.next() as i64 as i128,
                _ => (((r.next() as u128) << 64) | r.next() as u128) as i128,
            }),
            4 => {
                let x = match r.below(3) {
                    0 => f64::from_bits(r.next()),
                    1 => (r.below(100_000) as f64 - 50_000.0) / 64.0,
                    _ => *r.pick(&[0.0, -0.0, 1.0, 0.1, 1e-10, 1e22, 5e-324, f64::MAX]),
                };
                Term::Float(if x.is_finite() { x } else { 1.5 })
            }
            5 => Term::Integer(i128::from(u32::from(gen_char(r)))),
            _ => r
                .pick(&[Term::List(vec![]), Term::Tuple(vec![]), Term::Map(vec![])])
                .clone(),
        }
    }

    fn gen_term(r: &mut Rng, depth: usize) -> Term {
        if depth == 0 || r.below(3) == 0 {
            return gen_leaf(r);
        }
        let n = r.below(5) as usize;
        match r.below(4) {
            0 => Term::Tuple((0..n).map(|_| gen_term(r, depth - 1)).collect()),
            1 => Term::List((0..n).map(|_| gen_term(r, depth - 1)).collect()),
            2 => {
                let elems = (0..=n).map(|_| gen_term(r, depth - 1)).collect();
                // keep the canonical form the parser produces: tail not a list or string
                let tail = match gen_term(r, depth - 1) {
                    Term::List(_) | Term::ImproperList(..) | Term::Str(_) => a("tail"),
                    other => other,
                };
                Term::ImproperList(elems, Box::new(tail))
            }
            _ => Term::Map(
                (0..n)
                    .map(|_| (gen_term(r, depth - 1), gen_term(r, depth - 1)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn random_round_trip() {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        for n in 0..4000 {
            let term = gen_term(&mut r, 5);
            let printed = term.to_string();
            assert_eq!(
                parse_term(&printed),
                Ok(term.clone()),
                "case {n}: printed as {printed}"
            );
            if n % 10 == 0 {
                let two = format!("{printed}.\n% between\n{printed}.");
                assert_eq!(parse_terms(&two), Ok(vec![term.clone(), term]));
            }
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut r = Rng(0x2545_F491_4F6C_DD1D);
        const ALPHABET: &[u8] = b"{}[]<<>>#,.|\"'$\\%-+_09aZzex=:/()? \n\t\x00\xff";
        for _ in 0..3000 {
            let n = r.below(48) as usize;
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    if r.below(4) == 0 {
                        r.next() as u8
                    } else {
                        *r.pick(ALPHABET)
                    }
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_terms(&text);
            let _ = parse_term(&text);
        }
    }

    #[test]
    fn truncated_and_mutated_input_never_panics() {
        let mut r = Rng(0xDEAD_BEEF_CAFE_F00D);
        let mut sources: Vec<String> = [RELEASES, REL, SYS_CONFIG, APP, REBAR_CONFIG, SCRIPT]
            .iter()
            .map(|s| s.to_string())
            .collect();
        sources.extend(handmade_terms().iter().map(|t| format!("{t}.")));
        sources.extend((0..60).map(|_| format!("{}.", gen_term(&mut r, 3))));
        sources.push(r#""\x{1F6" '\^' $\x{ <<"é"/utf8, 1:8>> 16#fF_ 1.0e+ 2#"#.to_string());
        for src in &sources {
            let chars: Vec<char> = src.chars().collect();
            // every truncation
            for cut in 0..=chars.len() {
                let prefix: String = chars[..cut].iter().collect();
                let _ = parse_terms(&prefix);
                let _ = parse_term(&prefix);
            }
            // a few random mutations
            for _ in 0..20 {
                let mut m = chars.clone();
                for _ in 0..=r.below(3) {
                    let at = r.below(m.len() as u64 + 1) as usize;
                    match r.below(3) {
                        0 if at < m.len() => {
                            m.remove(at);
                        }
                        1 if at < m.len() => m[at] = gen_char(&mut r),
                        _ => m.insert(at, gen_char(&mut r)),
                    }
                }
                let text: String = m.into_iter().collect();
                let _ = parse_terms(&text);
                let _ = parse_term(&text);
            }
        }
    }
}
