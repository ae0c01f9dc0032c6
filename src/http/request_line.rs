//! Lenient request targets: percent-encodes the bytes `"`, `<` and `>` in a request's query
//! before hyper reads it.
//!
//! Entra ID's provisioning engine and its SCIM Validator send filters with raw double quotes
//! (`GET /scim/v2/Users?filter=userName+eq+"dale.mohr%40example.com"`). The `http` crate's URI
//! parser (after the WHATWG query set) refuses those three bytes, so hyper would answer an empty
//! 400 before any of our code runs. Encoding them is exactly what a browser does to such a URL;
//! the decoded query is the same, so nothing else changes.
//!
//! The adapter follows HTTP/1.1 framing so it only ever touches request lines: it reads each
//! head's `Content-Length` and skips that many body bytes. A chunked body ends the rewriting
//! for the rest of that connection (the bytes pass through unchanged, as without the adapter).
//! A header line longer than [`MAX_LINE`] bytes is not inspected (hyper refuses such heads).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest header line whose name and value are inspected for framing.
pub const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before or in the method of a request line.
    Method,
    /// In the request target: its path, then its query.
    Target { in_query: bool },
    /// After the target, up to the end of the request line.
    Version,
    /// In the header block; `line` holds the current line (bounded by `MAX_LINE`).
    Headers { line: Vec<u8>, content_length: u64, chunked: bool },
    /// In a body of known length.
    Body { remaining: u64 },
    /// Framing we do not follow (a chunked body): everything passes unchanged from here on.
    Passthrough,
}

/// The rewriting, separate from IO so that it is tested byte by byte.
#[derive(Debug)]
pub struct Rewriter {
    state: State,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter { state: State::Method }
    }
}

impl Rewriter {
    /// Appends `input`, rewritten, to `out`. Runs of bytes that stay as they are (a body, a
    /// header line, the request target up to a byte that matters) are copied in one piece:
    /// this runs on every byte every connection reads.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len());
        let mut rest = input;
        while !rest.is_empty() {
            let used = self.step(rest, out);
            rest = &rest[used..];
        }
    }

    /// Rewrites a prefix of `input` (at least one byte) into `out`; answers its length.
    fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let upto = |stop: &dyn Fn(u8) -> bool| input.iter().position(|b| stop(*b));
        match &mut self.state {
            State::Passthrough => {
                out.extend_from_slice(input);
                input.len()
            }
            State::Body { remaining } => {
                let n = (*remaining).min(input.len() as u64) as usize;
                out.extend_from_slice(&input[..n]);
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.state = State::Method;
                }
                n
            }
            State::Method => {
                let Some(i) = upto(&|b| b == b' ') else {
                    out.extend_from_slice(input);
                    return input.len();
                };
                out.extend_from_slice(&input[..=i]);
                self.state = State::Target { in_query: false };
                i + 1
            }
            State::Target { in_query } => {
                let in_query = *in_query;
                let special =
                    |b: u8| matches!(b, b' ' | b'\r' | b'\n' | b'?') || (in_query && matches!(b, b'"' | b'<' | b'>'));
                let Some(i) = upto(&special) else {
                    out.extend_from_slice(input);
                    return input.len();
                };
                out.extend_from_slice(&input[..i]);
                self.target_byte(input[i], out);
                i + 1
            }
            State::Version => {
                let Some(i) = upto(&|b| b == b'\n') else {
                    out.extend_from_slice(input);
                    return input.len();
                };
                out.extend_from_slice(&input[..=i]);
                self.state = State::Headers { line: Vec::new(), content_length: 0, chunked: false };
                i + 1
            }
            State::Headers { line, content_length, chunked } => {
                let end = upto(&|b| b == b'\n');
                let piece = &input[..end.unwrap_or(input.len())];
                out.extend_from_slice(&input[..end.map_or(input.len(), |i| i + 1)]);
                line.extend_from_slice(&piece[..piece.len().min(MAX_LINE.saturating_sub(line.len()))]);
                let Some(i) = end else { return input.len() };
                let text = line.strip_suffix(b"\r").unwrap_or(line);
                if !text.is_empty() {
                    read_framing(text, content_length, chunked);
                    line.clear();
                    return i + 1;
                }
                self.state = match (*chunked, *content_length) {
                    (true, _) => State::Passthrough,
                    (false, 0) => State::Method,
                    (false, n) => State::Body { remaining: n },
                };
                i + 1
            }
        }
    }

    /// A byte of the request target that may change the state or be encoded.
    fn target_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b' ' => {
                out.push(b);
                self.state = State::Version;
            }
            b'\r' | b'\n' => {
                // An HTTP/0.9-style line: leave it for hyper to refuse.
                out.push(b);
                self.state = State::Passthrough;
            }
            b'"' | b'<' | b'>' => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
            b'?' => {
                self.state = State::Target { in_query: true };
                out.push(b);
            }
            _ => out.push(b),
        }
    }
}

/// Reads `Content-Length` and `Transfer-Encoding` from one header line.
fn read_framing(line: &[u8], content_length: &mut u64, chunked: &mut bool) {
    let Some(colon) = line.iter().position(|b| *b == b':') else { return };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.eq_ignore_ascii_case(b"content-length") {
        *content_length = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        *chunked = true;
    }
}

/// A connection whose request lines pass through a [`Rewriter`].
pub struct LenientTargets<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the reader.
    pending: Vec<u8>,
    taken: usize,
}

impl<S> LenientTargets<S> {
    pub fn new(inner: S) -> Self {
        LenientTargets { inner, rewriter: Rewriter::default(), pending: Vec::new(), taken: 0 }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LenientTargets<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.taken == this.pending.len() {
            this.pending.clear();
            this.taken = 0;
            // Not zeroed first: the read fills what is used.
            let mut raw = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
            let mut raw_buf = ReadBuf::uninit(&mut raw);
            match Pin::new(&mut this.inner).poll_read(cx, &mut raw_buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            if raw_buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.rewriter.feed(raw_buf.filled(), &mut this.pending);
        }
        let n = (this.pending.len() - this.taken).min(buf.remaining());
        buf.put_slice(&this.pending[this.taken..this.taken + n]);
        this.taken += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LenientTargets<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(input: &str, chunk: usize) -> String {
        let mut r = Rewriter::default();
        let mut out = Vec::new();
        for piece in input.as_bytes().chunks(chunk) {
            r.feed(piece, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    /// A header line longer than [`MAX_LINE`] is passed on whole; the framing of the lines
    /// after it is still read.
    #[test]
    fn long_header_lines_pass_whole() {
        let long = "x".repeat(MAX_LINE * 2);
        let input = format!(
            "POST /a HTTP/1.1\r\nX-Long: {long}\r\nContent-Length: 2\r\n\r\n\"\"GET /b?q=\"1\" HTTP/1.1\r\n\r\n"
        );
        let want = format!(
            "POST /a HTTP/1.1\r\nX-Long: {long}\r\nContent-Length: 2\r\n\r\n\"\"GET /b?q=%221%22 HTTP/1.1\r\n\r\n"
        );
        for chunk in [1, 100, 8192, 1 << 20] {
            assert_eq!(rewrite(&input, chunk), want, "in pieces of {chunk}");
        }
    }

    #[test]
    fn quotes_in_queries_are_encoded_and_nothing_else_changes() {
        let table = [
            // Entra's validator, as logged.
            (
                "GET /scim/v2/Users?filter=userName+eq+\"dale.mohr%40example.com\" HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /scim/v2/Users?filter=userName+eq+%22dale.mohr%40example.com%22 HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            ("GET /a?x=<b> HTTP/1.1\r\n\r\n", "GET /a?x=%3Cb%3E HTTP/1.1\r\n\r\n"),
            // The path and the headers are left alone: hyper judges them.
            ("GET /\"a\" HTTP/1.1\r\nX-Q: \"v\"\r\n\r\n", "GET /\"a\" HTTP/1.1\r\nX-Q: \"v\"\r\n\r\n"),
            // A body is skipped by its length, and the next request on the connection rewritten.
            (
                "POST /a?q=\"1\" HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"a\":\"?\"}GET /b?q=\"2\" HTTP/1.1\r\n\r\n",
                "POST /a?q=%221%22 HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"a\":\"?\"}GET /b?q=%222%22 HTTP/1.1\r\n\r\n",
            ),
            // After a chunked body nothing is touched.
            (
                "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\"?\"\r\n0\r\n\r\nGET /b?q=\"2\" HTTP/1.1\r\n\r\n",
                "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\"?\"\r\n0\r\n\r\nGET /b?q=\"2\" HTTP/1.1\r\n\r\n",
            ),
            // Framing headers are found whatever their case and spacing; two requests in one read.
            (
                "PUT /a?q=\"1\" HTTP/1.1\r\ncontent-LENGTH:  3 \r\nX: y\r\n\r\n\"?\"GET /b?q=\"2\"&r=\"3\" HTTP/1.1\r\n\r\n",
                "PUT /a?q=%221%22 HTTP/1.1\r\ncontent-LENGTH:  3 \r\nX: y\r\n\r\n\"?\"GET /b?q=%222%22&r=%223%22 HTTP/1.1\r\n\r\n",
            ),
            // A second `?` is part of the query.
            ("GET /a?b?c=\"d\" HTTP/1.1\r\n\r\n", "GET /a?b?c=%22d%22 HTTP/1.1\r\n\r\n"),
            // An HTTP/0.9-style line ends the rewriting: hyper refuses it.
            ("GET /a?q=\"1\"\r\nGET /b?q=\"2\" HTTP/1.1\r\n\r\n", "GET /a?q=%221%22\r\nGET /b?q=\"2\" HTTP/1.1\r\n\r\n"),
        ];
        for (input, want) in table {
            for chunk in [1, 2, 3, 5, 7, 13, 64, 4096] {
                assert_eq!(rewrite(input, chunk), want, "{input:?} in pieces of {chunk}");
            }
        }
    }
}
