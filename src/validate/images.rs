//! Image checks: a data URL becomes an [`ImageInfo`] (format sniffed from the bytes, size and
//! pixel limits, content hash, Qwen2.5-VL visual-token estimate) or a 400/413 naming the field.
//!
//! Order matters for cost: the encoded length is checked before decoding, the pixel count is
//! read from the header before anything is decompressed, and nothing is fully decoded here.

use crate::config::LimitArgs;
use crate::error::GatewayError;
use bytes::Bytes;
use std::io::Cursor;
use std::time::{Duration, Instant};

/// Qwen2.5-VL: 14-pixel patches merged 2×2, so one visual token per 28×28 pixels.
pub const IMAGE_FACTOR: u64 = 28;
/// Qwen2-VL's smart_resize refuses images more elongated than this.
pub const MAX_ASPECT_RATIO: u64 = caprl_image::MAX_RATIO as u64;

/// The formats the gateway accepts, as sniffed from the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
    Gif,
    Bmp,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
            ImageFormat::Bmp => "bmp",
        }
    }

    fn from_image(f: image::ImageFormat) -> Option<Self> {
        Some(match f {
            image::ImageFormat::Png => ImageFormat::Png,
            image::ImageFormat::Jpeg => ImageFormat::Jpeg,
            image::ImageFormat::WebP => ImageFormat::Webp,
            image::ImageFormat::Gif => ImageFormat::Gif,
            image::ImageFormat::Bmp => ImageFormat::Bmp,
            _ => return None,
        })
    }

    fn to_image(self) -> image::ImageFormat {
        match self {
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Webp => image::ImageFormat::WebP,
            ImageFormat::Gif => image::ImageFormat::Gif,
            ImageFormat::Bmp => image::ImageFormat::Bmp,
        }
    }
}

/// What validation learned about one image. Never holds the bytes unless asked to (the
/// in-process engine needs them; HTTP workers get the client's own bytes).
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// Decoded size in bytes.
    pub bytes: usize,
    /// xxh3-128 of the decoded bytes: the affinity key, and safe to log. Not cryptographic: a
    /// crafted collision could only send two images to the same worker.
    pub hash: u128,
    /// Visual tokens Qwen2.5-VL will spend on it after smart_resize.
    pub tokens: u64,
    /// Time spent decoding base64, reading the header and hashing.
    pub check_time: Duration,
    /// The decoded bytes, kept only for in-process engines and for pools that resize images
    /// to the pixel budget (`crate::resize`).
    pub data: Option<Bytes>,
    /// Where it stands in the body: `messages[i].content[j]` (set by the scan).
    pub part: (usize, usize),
}

/// The part of the limits image checks need, copied once per request.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_image_bytes: u64,
    pub max_image_pixels: u64,
    pub min_pixels: u64,
    pub max_pixels: u64,
}

impl From<&LimitArgs> for ImageLimits {
    fn from(l: &LimitArgs) -> Self {
        ImageLimits {
            max_image_bytes: l.max_image_bytes,
            max_image_pixels: l.max_image_pixels,
            min_pixels: l.min_pixels,
            max_pixels: l.max_pixels,
        }
    }
}

/// Check one `data:` URL. `param` names the field for errors.
pub fn check_data_url(
    url: &str,
    limits: &ImageLimits,
    keep_bytes: bool,
    param: &str,
) -> Result<ImageInfo, GatewayError> {
    check_data_url_bytes(url.as_bytes(), false, limits, keep_bytes, param, &mut None)
}

/// [`check_data_url`] on a URL's bytes as the body holds them, not yet known to be text
/// (`api::chat::RawUrl`): every byte is checked here. `verbatim`: the bytes are the JSON
/// string's own (it had no escapes), so a control character in them was raw, which JSON
/// forbids. Also tells the caller the sniffed format when the check fails after sniffing (for
/// the rejected-images metric).
pub fn check_data_url_bytes(
    url: &[u8],
    verbatim: bool,
    limits: &ImageLimits,
    keep_bytes: bool,
    param: &str,
    sniffed: &mut Option<ImageFormat>,
) -> Result<ImageInfo, GatewayError> {
    let started = Instant::now();
    let invalid = |msg: String| GatewayError::invalid(msg, Some(param.to_string()));
    let malformed = || invalid("malformed base64 in data URL".into());
    let rest = url
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case(b"data:"))
        .map(|_| &url[5..])
        .ok_or_else(|| invalid("expected a data: URL".into()))?;
    let comma = memchr::memchr(b',', rest)
        .ok_or_else(|| invalid("malformed data URL: no ',' before the data".into()))?;
    let (meta, payload) = (&rest[..comma], &rest[comma + 1..]);
    // The head is short and must be text: a media type and `;base64`.
    let meta = crate::api::chat::plain_text(meta)
        .map_err(|_| invalid("malformed data URL: its media type is not plain text".into()))?;
    let (media_type, encoding) = match meta.split_once(';') {
        Some((m, e)) => (m.trim(), Some(e)),
        None => (meta.trim(), None),
    };
    check_media_type(media_type).map_err(invalid)?;
    check_encoding(encoding).map_err(invalid)?;

    // The payload needs no text check: base64 decoding refuses every byte outside its
    // alphabet, which is ASCII without control characters. Trailing whitespace is let go
    // when it came escaped (`\n`); raw, a control character is not JSON, so only spaces.
    let payload = if verbatim {
        let end = payload
            .iter()
            .rposition(|&b| b != b' ')
            .map_or(0, |i| i + 1);
        &payload[..end]
    } else {
        payload.trim_ascii_end()
    };

    // Decoded length is at most 3/4 of the encoded one: refuse before allocating.
    let decoded_max = (payload.len() as u64 / 4 + 1) * 3;
    if decoded_max > limits.max_image_bytes + 3 {
        return Err(GatewayError::too_large(
            format!(
                "image is about {} bytes decoded; the limit is {} bytes",
                payload.len() as u64 / 4 * 3,
                limits.max_image_bytes
            ),
            Some(param.to_string()),
        ));
    }
    if keep_bytes {
        let data = decode_base64(payload).ok_or_else(malformed)?;
        return check_image(data, limits, keep_bytes, param, sniffed, started);
    }
    // Not kept: decoded a block at a time into the hash, only the first bytes held for the
    // header, so a 1 MB image costs no 1 MB buffer and its bytes are hashed while in cache.
    let streamed = decode_streamed(payload).ok_or_else(malformed)?;
    check_len(streamed.len, limits, param)?;
    let format = sniff_checked(&streamed.head, param, sniffed)?;
    match read_dimensions(&streamed.head, format) {
        Ok((width, height)) => finish(
            Found {
                format,
                width,
                height,
                bytes: streamed.len,
                hash: streamed.hash,
            },
            None,
            limits,
            param,
            started,
        ),
        // The header lies past the first bytes (a JPEG behind large EXIF or ICC segments):
        // decode it whole and read it again. Rare, and bounded by the size limit above.
        Err(_) if streamed.head.len() < streamed.len => {
            let data = decode_base64(payload).ok_or_else(malformed)?;
            check_image(data, limits, keep_bytes, param, sniffed, started)
        }
        Err(e) => Err(header_error(format, e, param)),
    }
}

/// Check decoded image bytes (from a data URL, or a stored file): size, format sniffed from
/// the bytes, pixels from the header, aspect ratio; then hash them and count their tokens.
pub fn check_image(
    data: Vec<u8>,
    limits: &ImageLimits,
    keep_bytes: bool,
    param: &str,
    sniffed: &mut Option<ImageFormat>,
    started: Instant,
) -> Result<ImageInfo, GatewayError> {
    check_len(data.len(), limits, param)?;
    let format = sniff_checked(&data, param, sniffed)?;
    let (width, height) =
        read_dimensions(&data, format).map_err(|e| header_error(format, e, param))?;
    let found = Found {
        format,
        width,
        height,
        bytes: data.len(),
        hash: xxhash_rust::xxh3::xxh3_128(&data),
    };
    finish(
        found,
        keep_bytes.then(|| Bytes::from(data)),
        limits,
        param,
        started,
    )
}

/// What was read of an image before the checks on its size in pixels.
struct Found {
    format: ImageFormat,
    width: u32,
    height: u32,
    bytes: usize,
    hash: u128,
}

fn check_len(len: usize, limits: &ImageLimits, param: &str) -> Result<(), GatewayError> {
    if len as u64 > limits.max_image_bytes {
        return Err(GatewayError::too_large(
            format!(
                "image is {len} bytes decoded; the limit is {} bytes",
                limits.max_image_bytes
            ),
            Some(param.to_string()),
        ));
    }
    Ok(())
}

fn sniff_checked(
    head: &[u8],
    param: &str,
    sniffed: &mut Option<ImageFormat>,
) -> Result<ImageFormat, GatewayError> {
    let format = sniff(head).ok_or_else(|| {
        GatewayError::invalid(
            "the data is not a supported image (png, jpeg, webp, gif, bmp)",
            Some(param.to_string()),
        )
    })?;
    *sniffed = Some(format);
    Ok(format)
}

/// Width and height from the header, without decoding pixels.
fn read_dimensions(data: &[u8], format: ImageFormat) -> Result<(u32, u32), String> {
    if format == ImageFormat::Jpeg {
        // zune-jpeg on the slice itself: `image`'s JPEG decoder first copies its whole input
        // into a Vec (zune-jpeg reads slices), for a header of a few hundred bytes. The same
        // options `image` sets; the same checks (markers, quantisation and Huffman tables).
        let options = zune_core::options::DecoderOptions::default()
            .set_strict_mode(false)
            .set_max_width(usize::MAX)
            .set_max_height(usize::MAX);
        let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
            zune_core::bytestream::ZCursor::new(data),
            options,
        );
        decoder.decode_headers().map_err(|e| e.to_string())?;
        let (w, h) = decoder
            .dimensions()
            .ok_or_else(|| "no frame header".to_string())?;
        return Ok((w as u32, h as u32));
    }
    image::ImageReader::with_format(Cursor::new(data), format.to_image())
        .into_dimensions()
        .map_err(|e| e.to_string())
}

fn header_error(format: ImageFormat, e: String, param: &str) -> GatewayError {
    GatewayError::invalid(
        format!("cannot read the {} header: {e}", format.as_str()),
        Some(param.to_string()),
    )
}

/// The checks on the image's size in pixels and shape, then its tokens.
fn finish(
    found: Found,
    data: Option<Bytes>,
    limits: &ImageLimits,
    param: &str,
    started: Instant,
) -> Result<ImageInfo, GatewayError> {
    let invalid = |msg: String| GatewayError::invalid(msg, Some(param.to_string()));
    let Found {
        format,
        width,
        height,
        bytes,
        hash,
    } = found;
    if width == 0 || height == 0 {
        return Err(invalid(format!("image has no pixels ({width}x{height})")));
    }
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_image_pixels {
        return Err(GatewayError::too_large(
            format!(
                "image is {width}x{height} = {pixels} pixels; the limit is {}",
                limits.max_image_pixels
            ),
            Some(param.to_string()),
        ));
    }
    let (w, h) = (width as u64, height as u64);
    if w.max(h) > MAX_ASPECT_RATIO * w.min(h) {
        return Err(invalid(format!(
            "image aspect ratio {width}x{height} is more than {MAX_ASPECT_RATIO}:1"
        )));
    }
    let (rh, rw) = smart_resize(h, w, limits.min_pixels, limits.max_pixels).ok_or_else(|| {
        invalid(format!(
            "image {width}x{height} has no size Qwen2.5-VL can resize it to"
        ))
    })?;
    Ok(ImageInfo {
        format,
        width,
        height,
        bytes,
        hash,
        tokens: (rh / IMAGE_FACTOR) * (rw / IMAGE_FACTOR),
        check_time: started.elapsed(),
        data,
        part: (0, 0),
    })
}

/// The format `data` looks like from its first bytes, if it is one the gateway accepts. Only a
/// label: [`check_image`] decides.
pub fn sniff(data: &[u8]) -> Option<ImageFormat> {
    image::guess_format(data)
        .ok()
        .and_then(ImageFormat::from_image)
}

/// A data URL of `data`, with the media type of its sniffed `format`.
pub fn data_url(format: ImageFormat, data: &[u8]) -> String {
    let b64 = base64_simd::STANDARD.encode_to_string(data);
    format!("data:image/{};base64,{b64}", format.as_str())
}

/// Standard base64, padding optional, SIMD-decoded.
fn decode_base64(payload: &[u8]) -> Option<Vec<u8>> {
    base64_simd::STANDARD_NO_PAD
        .decode_to_vec(unpadded(payload)?)
        .ok()
}

/// `payload` without its padding, which may be absent but not longer than two `=`.
fn unpadded(payload: &[u8]) -> Option<&[u8]> {
    let end = payload
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(0, |i| i + 1);
    (payload.len() - end <= 2).then_some(&payload[..end])
}

/// Base64 characters decoded into the bytes kept for the header read (a multiple of 4, so the
/// blocks after it decode on their own): 96 KiB of image, enough for every format's header
/// unless a JPEG carries more metadata before its frame header.
const HEAD_CHARS: usize = 128 << 10;
/// Base64 characters decoded at a time after the head: 48 KiB of image, which stays in cache
/// between the decoder writing it and the hash reading it.
const BLOCK_CHARS: usize = 64 << 10;

/// An image decoded from base64 and not kept: its first bytes, its length and its xxh3-128
/// (the same as [`xxhash_rust::xxh3::xxh3_128`] of the whole).
struct Streamed {
    head: Vec<u8>,
    len: usize,
    hash: u128,
}

fn decode_streamed(payload: &[u8]) -> Option<Streamed> {
    use base64_simd::AsOut;
    let engine = base64_simd::STANDARD_NO_PAD;
    let b64 = unpadded(payload)?;
    let (head, mut rest) = b64.split_at(b64.len().min(HEAD_CHARS));
    let head = engine.decode_to_vec(head).ok()?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&head);
    let mut len = head.len();
    let mut block = vec![
        0;
        if rest.is_empty() {
            0
        } else {
            BLOCK_CHARS / 4 * 3
        }
    ];
    while !rest.is_empty() {
        let (chars, tail) = rest.split_at(rest.len().min(BLOCK_CHARS));
        let bytes = engine.decode(chars, block.as_mut_slice().as_out()).ok()?;
        hasher.update(bytes);
        len += bytes.len();
        rest = tail;
    }
    Some(Streamed {
        head,
        len,
        hash: hasher.digest128(),
    })
}

/// What may follow the media type: exactly `;base64`. RFC 2397 makes the token
/// case-insensitive and allows parameters before it (`;charset=…;base64`), but vLLM takes
/// everything after the first `;` and accepts only the exact string `base64` (anything else is
/// its 501 "Only base64 data URLs are supported"), so those would pass here and fail on the
/// worker.
///
/// Refused rather than normalised: rewriting `;BASE64` to `;base64` would copy the whole body
/// (up to `max_body_bytes`) for a request that is otherwise forwarded as received, and hide
/// from the client that its URLs do not work against a plain vLLM; a 400 naming the field
/// costs the client one fix.
fn check_encoding(encoding: Option<&str>) -> Result<(), String> {
    match encoding {
        Some("base64") => Ok(()),
        Some(e) if e.trim().eq_ignore_ascii_case("base64") => Err(format!(
            "write the data URL's `;{e}` as `;base64` (lowercase, no spaces): workers read only that"
        )),
        Some(e) if e.split(';').any(|p| p.trim().eq_ignore_ascii_case("base64")) => Err(format!(
            "data URL parameters `;{e}` are not supported: write data:image/png;base64,..."
        )),
        _ => Err("data URL must be base64-encoded (data:image/png;base64,...)".into()),
    }
}

/// Whether an `http(s)://` URL names a host: `scheme://` then an authority with a non-empty
/// host (after any `user@`, before any `:port`). The scheme has been checked by the caller.
pub fn has_host(url: &str) -> bool {
    let Some((_, rest)) = url.split_once(':') else {
        return false;
    };
    let Some(rest) = rest.strip_prefix("//") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        // An IPv6 literal: everything up to the `]`.
        host_port.split_once(']').map_or("", |(h, _)| &h[1..])
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    !host.is_empty()
        && !host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

/// Media types a data URL may declare. The bytes decide the real format: a declared subtype
/// that disagrees is not an error; a non-image type is.
fn check_media_type(media_type: &str) -> Result<(), String> {
    let lower = media_type.to_ascii_lowercase();
    match lower.as_str() {
        // CapRL's own scripts send `data:image;base64,` with no subtype.
        "image" | "image/png" | "image/jpeg" | "image/jpg" | "image/pjpeg" | "image/webp"
        | "image/gif" | "image/bmp" | "image/x-bmp" | "image/x-ms-bmp" => Ok(()),
        "" => Err("data URL has no media type; expected image/png, image/jpeg, …".into()),
        t if t.starts_with("image/") => Err(format!(
            "unsupported image type `{media_type}`; supported: png, jpeg, webp, gif, bmp"
        )),
        _ => Err(format!(
            "data URL media type `{media_type}` is not an image"
        )),
    }
}

/// Qwen2-VL's `smart_resize` (transformers' arithmetic, shared with the engine and the resize
/// to the pixel budget): the (height, width) the model sees, both multiples of 28, the aspect
/// ratio kept as well as it can be, total pixels within `[min_pixels, max_pixels]`. `None` for
/// an image `check_image` refuses anyway (no pixels, more elongated than 200:1).
pub fn smart_resize(
    height: u64,
    width: u64,
    min_pixels: u64,
    max_pixels: u64,
) -> Option<(u64, u64)> {
    let usize_of = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    caprl_image::smart_resize(
        usize_of(height),
        usize_of(width),
        IMAGE_FACTOR as usize,
        usize_of(min_pixels),
        usize_of(max_pixels),
    )
    .ok()
    .map(|(h, w)| (h as u64, w as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ImageLimits = ImageLimits {
        max_image_bytes: 1 << 20,
        max_image_pixels: 50_000_000,
        min_pixels: 3136,
        max_pixels: 12_845_056,
    };

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("encode png");
        out
    }

    fn url(prefix: &str, bytes: &[u8]) -> String {
        use base64::Engine;
        format!(
            "{prefix}{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    #[test]
    fn base64_padding_is_optional() {
        assert_eq!(decode_base64(b"aGk="), Some(b"hi".to_vec()));
        assert_eq!(decode_base64(b"aGk"), Some(b"hi".to_vec()));
        assert_eq!(decode_base64(b"aGk==="), None);
        assert_eq!(decode_base64(b"a=Gk"), None);
    }

    #[test]
    fn smart_resize_matches_the_reference() {
        // Values computed with transformers' smart_resize.
        assert_eq!(smart_resize(56, 84, 3136, 12_845_056), Some((56, 84)));
        assert_eq!(smart_resize(47, 101, 3136, 12_845_056), Some((56, 112)));
        assert_eq!(smart_resize(30, 20, 3136, 12_845_056), Some((84, 56)));
        assert_eq!(smart_resize(200, 300, 3136, 12_845_056), Some((196, 308)));
        assert_eq!(
            smart_resize(4000, 6000, 3136, 12_845_056),
            Some((2912, 4368))
        );
        // 10 px rounds to 0 rows in transformers (no floor of one factor there): the area is
        // then under min_pixels and both sides are scaled up, 10x2000 -> 28x812 (the width
        // is not kept at 1988 as a clamp to 28 rows would keep it).
        assert_eq!(smart_resize(10, 2000, 3136, 12_845_056), Some((28, 812)));
        assert_eq!(smart_resize(1, 300, 3136, 12_845_056), None);
    }

    #[test]
    fn checks_a_png_with_and_without_subtype() {
        let bytes = png(64, 32);
        for prefix in [
            "data:image/png;base64,",
            "data:image;base64,",
            "data:image/jpeg;base64,",
        ] {
            let info = check_data_url(&url(prefix, &bytes), &LIMITS, false, "p").expect(prefix);
            assert_eq!(info.format, ImageFormat::Png, "sniffed, not declared");
            assert_eq!((info.width, info.height), (64, 32));
            assert_eq!(info.hash, xxhash_rust::xxh3::xxh3_128(&bytes));
            let (rh, rw) = smart_resize(32, 64, 3136, 12_845_056).expect("a size");
            assert_eq!(info.tokens, (rh / 28) * (rw / 28));
            assert!(info.data.is_none());
        }
    }

    #[test]
    fn rejects_what_is_not_an_image() {
        let err = check_data_url(
            &url("data:image/png;base64,", b"hello world"),
            &LIMITS,
            false,
            "p",
        )
        .expect_err("not an image");
        assert_eq!(err.status(), 400);
        let err = check_data_url(
            &url("data:text/plain;base64,", &png(4, 4)),
            &LIMITS,
            false,
            "p",
        )
        .expect_err("not an image type");
        assert_eq!(err.status(), 400);
        let err = check_data_url("data:image/png;base64,@@@@", &LIMITS, false, "p")
            .expect_err("bad base64");
        assert_eq!(err.status(), 400);
        let err =
            check_data_url("data:image/png,rawbytes", &LIMITS, false, "p").expect_err("not base64");
        assert_eq!(err.status(), 400);
        let err = check_data_url(
            &url("data:image/tiff;base64,", &png(4, 4)),
            &LIMITS,
            false,
            "p",
        )
        .expect_err("tiff declared");
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn only_lowercase_base64_with_no_parameters_is_read() {
        let bytes = png(8, 8);
        for (prefix, hint) in [
            ("data:image/png;BASE64,", "lowercase"),
            ("data:image/png;Base64,", "lowercase"),
            ("data:image/png; base64,", "lowercase"),
            ("data:image/png;charset=utf-8;base64,", "not supported"),
            ("data:image/png;base64;x=y,", "not supported"),
        ] {
            let err = check_data_url(&url(prefix, &bytes), &LIMITS, false, "p").expect_err(prefix);
            assert_eq!(err.status(), 400, "{prefix}");
            assert!(err.to_string().contains(hint), "{prefix}: {err}");
            let v = serde_json::to_value(err.envelope()).expect("json");
            assert_eq!(v["error"]["param"], "p");
        }
        // The scheme and the media type are case-insensitive to vLLM too.
        check_data_url(&url("DATA:IMAGE/PNG;base64,", &bytes), &LIMITS, false, "p")
            .expect("upper-case scheme and type");
    }

    #[test]
    fn http_urls_need_a_host() {
        for ok in [
            "http://example.com/a.png",
            "https://u:p@example.com:8443/a.png?x#y",
            "http://[::1]:80/a.png",
            "HTTPS://h",
        ] {
            assert!(has_host(ok), "{ok}");
        }
        for bad in [
            "http:",
            "http:/a.png",
            "http://",
            "https:///a.png",
            "http://:80/a.png",
            "http://user@/a.png",
            "http://[]/a.png",
            "http:// /a.png",
            "https:example.com/a.png",
        ] {
            assert!(!has_host(bad), "{bad}");
        }
    }

    #[test]
    fn truncated_header_is_a_400() {
        let bytes = png(64, 32);
        let err = check_data_url(
            &url("data:image;base64,", &bytes[..20]),
            &LIMITS,
            false,
            "x",
        )
        .expect_err("truncated");
        assert_eq!(err.status(), 400);
        let v = serde_json::to_value(err.envelope()).expect("json");
        assert_eq!(v["error"]["param"], "x");
    }

    #[test]
    fn limits_are_413() {
        let big = png(64, 32);
        let tight = ImageLimits {
            max_image_bytes: 50,
            ..LIMITS
        };
        let err = check_data_url(&url("data:image/png;base64,", &big), &tight, false, "p")
            .expect_err("too many bytes");
        assert_eq!(err.status(), 413);
        let few_pixels = ImageLimits {
            max_image_pixels: 1000,
            ..LIMITS
        };
        let err = check_data_url(
            &url("data:image/png;base64,", &big),
            &few_pixels,
            false,
            "p",
        )
        .expect_err("too many pixels");
        assert_eq!(err.status(), 413);
    }

    #[test]
    fn keeps_bytes_when_asked() {
        let bytes = png(8, 8);
        let info =
            check_data_url(&url("data:image/png;base64,", &bytes), &LIMITS, true, "p").expect("ok");
        assert_eq!(info.data.as_deref(), Some(&bytes[..]));
    }
}
