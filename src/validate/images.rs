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
    check_data_url_sniffed(url, limits, keep_bytes, param, &mut None)
}

/// [`check_data_url`], also telling the caller the sniffed format when the check fails after
/// sniffing (for the rejected-images metric).
pub fn check_data_url_sniffed(
    url: &str,
    limits: &ImageLimits,
    keep_bytes: bool,
    param: &str,
    sniffed: &mut Option<ImageFormat>,
) -> Result<ImageInfo, GatewayError> {
    let started = Instant::now();
    let invalid = |msg: String| GatewayError::invalid(msg, Some(param.to_string()));
    let rest = url
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("data:"))
        .map(|_| &url[5..])
        .ok_or_else(|| invalid("expected a data: URL".into()))?;
    let (meta, payload) = rest
        .split_once(',')
        .ok_or_else(|| invalid("malformed data URL: no ',' before the data".into()))?;
    let (media_type, encoding) = match meta.split_once(';') {
        Some((m, e)) => (m.trim(), Some(e)),
        None => (meta.trim(), None),
    };
    check_media_type(media_type).map_err(invalid)?;
    check_encoding(encoding).map_err(invalid)?;

    // Decoded length is at most 3/4 of the encoded one: refuse before allocating.
    let payload = payload.trim_end();
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
    let data = decode_base64(payload)
        .ok_or_else(|| invalid("malformed base64 in data URL".to_string()))?;
    check_image(data, limits, keep_bytes, param, sniffed, started)
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
    let invalid = |msg: String| GatewayError::invalid(msg, Some(param.to_string()));
    if data.len() as u64 > limits.max_image_bytes {
        return Err(GatewayError::too_large(
            format!(
                "image is {} bytes decoded; the limit is {} bytes",
                data.len(),
                limits.max_image_bytes
            ),
            Some(param.to_string()),
        ));
    }

    let format = image::guess_format(&data)
        .ok()
        .and_then(ImageFormat::from_image)
        .ok_or_else(|| {
            invalid("the data is not a supported image (png, jpeg, webp, gif, bmp)".into())
        })?;
    *sniffed = Some(format);
    let (width, height) = image::ImageReader::with_format(Cursor::new(&data), format.to_image())
        .into_dimensions()
        .map_err(|e| invalid(format!("cannot read the {} header: {e}", format.as_str())))?;
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
    let hash = xxhash_rust::xxh3::xxh3_128(&data);
    let (rh, rw) = smart_resize(h, w, limits.min_pixels, limits.max_pixels).ok_or_else(|| {
        invalid(format!(
            "image {width}x{height} has no size Qwen2.5-VL can resize it to"
        ))
    })?;
    let bytes = data.len();
    Ok(ImageInfo {
        format,
        width,
        height,
        bytes,
        hash,
        tokens: (rh / IMAGE_FACTOR) * (rw / IMAGE_FACTOR),
        check_time: started.elapsed(),
        data: keep_bytes.then(|| Bytes::from(data)),
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
fn decode_base64(payload: &str) -> Option<Vec<u8>> {
    let unpadded = payload.trim_end_matches('=');
    if payload.len() - unpadded.len() > 2 {
        return None;
    }
    base64_simd::STANDARD_NO_PAD
        .decode_to_vec(unpadded.as_bytes())
        .ok()
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
        assert_eq!(decode_base64("aGk="), Some(b"hi".to_vec()));
        assert_eq!(decode_base64("aGk"), Some(b"hi".to_vec()));
        assert_eq!(decode_base64("aGk==="), None);
        assert_eq!(decode_base64("a=Gk"), None);
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
