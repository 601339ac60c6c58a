//! Bounding a run's output.
//!
//! [`Capture`] keeps the first `limit` bytes of one stream and counts the
//! rest; its text ends with a `[… N bytes truncated]` marker when it was
//! cut. [`Utf8Chunks`] turns the kept bytes into text for `output` frames
//! without splitting a multi-byte character across two frames.

/// The first `limit` bytes of one output stream, and how many there were.
#[derive(Debug)]
pub struct Capture {
    limit: usize,
    kept: Vec<u8>,
    total: u64,
}

impl Capture {
    pub fn new(limit: usize) -> Capture {
        Capture {
            limit,
            kept: Vec::new(),
            total: 0,
        }
    }

    /// Records `chunk` and returns the part of it that is kept (empty once
    /// the limit is reached). Everything ever returned adds up to at most
    /// `limit` bytes, so it is what may be streamed.
    pub fn push<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        self.total = self.total.saturating_add(chunk.len() as u64);
        let room = self.limit.saturating_sub(self.kept.len());
        let kept = &chunk[..chunk.len().min(room)];
        self.kept.extend_from_slice(kept);
        kept
    }

    /// Bytes seen but not kept.
    pub fn dropped(&self) -> u64 {
        self.total.saturating_sub(self.kept.len() as u64)
    }

    /// The kept text with the truncation marker appended when bytes were
    /// dropped, whether they were, and whether the text is escaped (it held
    /// NUL or bytes that are not UTF-8; see [`subjects::text`]).
    pub fn finish(self) -> Kept {
        let dropped = self.dropped();
        let (text, escaped) = subjects::text::escape_bytes(&self.kept);
        let mut text = text.into_owned();
        if dropped > 0 {
            text.push_str(&truncation_marker(dropped));
        }
        Kept {
            text,
            truncated: dropped > 0,
            escaped,
        }
    }
}

/// What a [`Capture`] kept, as text.
#[derive(Debug, PartialEq, Eq)]
pub struct Kept {
    pub text: String,
    pub truncated: bool,
    pub escaped: bool,
}

/// What ends a truncated stream's text.
pub fn truncation_marker(dropped: u64) -> String {
    format!("\n[… {dropped} bytes truncated]")
}

/// `text` cut to at most `limit` bytes (at a character boundary, so maybe
/// fewer) with the cut marked; unchanged when it fits.
pub fn bound_text(mut text: String, limit: usize) -> String {
    if text.len() <= limit {
        return text;
    }
    let mut cut = limit;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = (text.len() - cut) as u64;
    text.truncate(cut);
    text.push_str(&truncation_marker(dropped));
    text
}

/// Incremental UTF-8 decoding: holds back an incomplete character at the end
/// of a chunk until the next one completes it; invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Chunks {
    pending: Vec<u8>,
}

impl Utf8Chunks {
    /// The text of `bytes` (after what was held back), minus a trailing
    /// incomplete character.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::with_capacity(self.pending.len());
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    start = self.pending.len();
                }
                Err(err) => {
                    let valid_end = start + err.valid_up_to();
                    text.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    match err.error_len() {
                        Some(len) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + len;
                        }
                        // An incomplete character at the end: wait for more.
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        text
    }

    /// Bytes held back (an incomplete character at the end so far).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whatever is still held back (at end of stream), lossily.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_under_the_limit() {
        let mut capture = Capture::new(10);
        assert_eq!(capture.push(b"hello"), b"hello");
        assert_eq!(capture.push(b"\n"), b"\n");
        assert_eq!(capture.finish(), kept("hello\n", false, false));
    }

    #[test]
    fn exactly_the_limit_is_not_truncated() {
        let mut capture = Capture::new(4);
        assert_eq!(capture.push(b"abcd"), b"abcd");
        assert_eq!(capture.push(b""), b"");
        assert_eq!(capture.finish(), kept("abcd", false, false));
    }

    #[test]
    fn cuts_at_the_limit_and_counts_the_rest() {
        let mut capture = Capture::new(5);
        assert_eq!(capture.push(b"abc"), b"abc");
        assert_eq!(capture.push(b"defgh"), b"de");
        assert_eq!(capture.push(&[b'x'; 12345]), b"");
        assert_eq!(capture.dropped(), 12348);
        assert_eq!(
            capture.finish(),
            kept("abcde\n[… 12348 bytes truncated]", true, false)
        );
    }

    #[test]
    fn a_zero_limit_keeps_nothing() {
        let mut capture = Capture::new(0);
        assert_eq!(capture.push(b"abc"), b"");
        assert_eq!(
            capture.finish(),
            kept("\n[… 3 bytes truncated]", true, false)
        );
    }

    fn kept(text: &str, truncated: bool, escaped: bool) -> Kept {
        Kept {
            text: text.to_owned(),
            truncated,
            escaped,
        }
    }

    #[test]
    fn nul_and_invalid_utf8_are_escaped_in_the_result() {
        let mut capture = Capture::new(10);
        capture.push(b"a\0b\xff");
        assert_eq!(capture.finish(), kept("a\\0b\\xff", false, true));
    }

    #[test]
    fn bound_text_cuts_at_a_character_boundary() {
        assert_eq!(bound_text("short".to_owned(), 5), "short");
        assert_eq!(
            bound_text("abcdef".to_owned(), 4),
            "abcd\n[… 2 bytes truncated]"
        );
        assert_eq!(bound_text("a€b".to_owned(), 2), "a\n[… 4 bytes truncated]");
        assert_eq!(bound_text("abc".to_owned(), 0), "\n[… 3 bytes truncated]");
    }

    #[test]
    fn chunks_do_not_split_characters() {
        let euro = "€".as_bytes(); // three bytes
        let mut chunks = Utf8Chunks::default();
        assert_eq!(chunks.push(&[b'a', euro[0]]), "a");
        assert_eq!(chunks.push(&euro[1..2]), "");
        assert_eq!(chunks.push(&[euro[2], b'b']), "€b");
        assert_eq!(chunks.finish(), "");
    }

    #[test]
    fn chunks_replace_invalid_bytes_and_flush_at_the_end() {
        let mut chunks = Utf8Chunks::default();
        assert_eq!(chunks.push(b"a\xffb\xe2\x82"), "a\u{FFFD}b");
        assert_eq!(chunks.finish(), "\u{FFFD}");
    }
}
