//! The issuer's logo: a PNG checked once when the configuration is read,
//! carried in the issued fact as base64, decoded to pixels when a document
//! is rendered. Pure and deterministic: the same bytes give the same image.
//!
//! Only what a logo needs is read: 8-bit non-interlaced PNGs (gray, gray
//! with alpha, RGB, RGBA, palette with optional transparency). Anything else
//! is refused with a reason when `serve` starts, never at a close.

use std::io::{Read, Write};

/// The largest logo accepted: it is copied into every issued invoice.
pub const MAX_BYTES: usize = 64 * 1024;

/// Largest side in pixels (a logo is printed ~12 mm high).
const MAX_SIDE: u32 = 4096;

/// Most pixels in all: a small file may claim a huge image, and it is
/// decoded at every render (1 megapixel is ~40 times what 11 mm need).
const MAX_PIXELS: u64 = 1 << 20;

/// A decoded logo: 8-bit samples, `channels` per pixel (1 gray, 2 gray +
/// alpha, 3 RGB, 4 RGBA), rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// Decodes and checks a PNG logo; the error says what is wrong in words.
pub fn decode(png: &[u8]) -> Result<Pixels, String> {
    if png.len() > MAX_BYTES {
        return Err(format!(
            "the logo is {} bytes; at most {MAX_BYTES} (it is copied into every invoice)",
            png.len()
        ));
    }
    let rest = png
        .strip_prefix(&SIGNATURE)
        .ok_or("the logo is not a PNG file (SVG and other formats: convert it to PNG)")?;
    let mut header = None;
    let mut palette: Vec<u8> = Vec::new();
    let mut transparency: Vec<u8> = Vec::new();
    let mut idat = Vec::new();
    let mut at = 0usize;
    loop {
        let chunk = rest
            .get(at..at + 8)
            .ok_or("the PNG ends before its IEND chunk")?;
        let len = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
        let kind = &chunk[4..8];
        let body = rest
            .get(at + 8..at + 8 + len)
            .ok_or("a PNG chunk runs past the end of the file")?;
        at += 12 + len;
        match kind {
            b"IHDR" => {
                if body.len() != 13 {
                    return Err("the PNG header is malformed".into());
                }
                header = Some([
                    u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    u32::from(body[8]),
                    u32::from(body[9]),
                    u32::from(body[12]),
                ]);
            }
            b"PLTE" => palette = body.to_vec(),
            b"tRNS" => transparency = body.to_vec(),
            b"IDAT" => idat.extend_from_slice(body),
            b"IEND" => break,
            _ => {}
        }
    }
    let [width, height, depth, color, interlace] = header.ok_or("the PNG has no header")?;
    if width == 0
        || height == 0
        || width > MAX_SIDE
        || height > MAX_SIDE
        || u64::from(width) * u64::from(height) > MAX_PIXELS
    {
        return Err(format!(
            "the logo is {width}×{height} pixels; each side must be 1 to {MAX_SIDE}, at most {MAX_PIXELS} pixels in all"
        ));
    }
    if depth != 8 {
        return Err(format!(
            "the logo has {depth}-bit samples; save it with 8 bits per channel"
        ));
    }
    if interlace != 0 {
        return Err("the logo is interlaced; save it without interlacing".into());
    }
    let in_channels: usize = match color {
        0 => 1,
        2 => 3,
        3 => 1,
        4 => 2,
        6 => 4,
        _ => return Err(format!("the PNG colour type {color} is not valid")),
    };
    let (w, h) = (width as usize, height as usize);
    let stride = w * in_channels;
    let mut raw = Vec::with_capacity((stride + 1) * h);
    flate2::read::ZlibDecoder::new(&idat[..])
        .take(((stride + 1) * h + 1) as u64)
        .read_to_end(&mut raw)
        .map_err(|e| format!("the PNG image data cannot be inflated: {e}"))?;
    if raw.len() != (stride + 1) * h {
        return Err("the PNG image data has the wrong size".into());
    }
    let rows = unfilter(&raw, stride, in_channels, h)?;
    let (channels, data) = if color == 3 {
        if palette.is_empty() || !palette.len().is_multiple_of(3) {
            return Err("the palette PNG has no valid palette".into());
        }
        let alpha = !transparency.is_empty();
        let mut out = Vec::with_capacity(w * h * if alpha { 4 } else { 3 });
        for &i in &rows {
            let i = usize::from(i);
            let rgb = palette
                .get(i * 3..i * 3 + 3)
                .ok_or("a pixel names a colour the palette does not have")?;
            out.extend_from_slice(rgb);
            if alpha {
                out.push(transparency.get(i).copied().unwrap_or(255));
            }
        }
        (if alpha { 4 } else { 3 }, out)
    } else {
        (in_channels as u8, rows)
    };
    Ok(Pixels {
        width,
        height,
        channels,
        data,
    })
}

/// Reverses the per-row filters of PNG (none, sub, up, average, Paeth).
fn unfilter(raw: &[u8], stride: usize, bpp: usize, h: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; stride * h];
    for y in 0..h {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        let (done, rest) = out.split_at_mut(y * stride);
        let prior = if y == 0 {
            None
        } else {
            Some(&done[(y - 1) * stride..])
        };
        let cur = &mut rest[..stride];
        for x in 0..stride {
            let a = if x >= bpp { cur[x - bpp] } else { 0 };
            let b = prior.map_or(0, |p| p[x]);
            let c = if x >= bpp {
                prior.map_or(0, |p| p[x - bpp])
            } else {
                0
            };
            let v = line[x];
            cur[x] = match filter {
                0 => v,
                1 => v.wrapping_add(a),
                2 => v.wrapping_add(b),
                3 => v.wrapping_add(((u16::from(a) + u16::from(b)) / 2) as u8),
                4 => v.wrapping_add(paeth(a, b, c)),
                f => return Err(format!("the PNG uses an unknown row filter {f}")),
            };
        }
    }
    Ok(out)
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

fn crc(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8], body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let mut k = kind.to_vec();
    k.extend_from_slice(body);
    out.extend_from_slice(&k);
    out.extend_from_slice(&crc(&k).to_be_bytes());
}

/// Encodes `w`×`h` RGBA pixels as a PNG, each row with filter `filter`
/// (0 none, 1 sub, 2 up): the demo's logo, and the decoder's tests.
pub fn encode_rgba(w: u32, h: u32, px: impl Fn(u32, u32) -> [u8; 4], filter: u8) -> Vec<u8> {
    let mut raw = Vec::new();
    let row = |y: u32| -> Vec<u8> { (0..w).flat_map(|x| px(x, y)).collect() };
    for y in 0..h {
        let cur = row(y);
        raw.push(filter);
        for (i, &v) in cur.iter().enumerate() {
            raw.push(match filter {
                1 => v.wrapping_sub(if i >= 4 { cur[i - 4] } else { 0 }),
                2 => v.wrapping_sub(if y > 0 { row(y - 1)[i] } else { 0 }),
                _ => v,
            });
        }
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = z.write_all(&raw);
    let idat = z.finish().unwrap_or_default();
    let mut out = SIGNATURE.to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn every_filter_decodes_to_the_same_pixels() {
        let px = |x: u32, y: u32| [(x * 40) as u8, (y * 60) as u8, (x * y) as u8, 200];
        let want: Vec<u8> = (0..3)
            .flat_map(|y| (0..5).flat_map(move |x| px(x, y)))
            .collect();
        for filter in [0, 1, 2] {
            let p = decode(&encode_rgba(5, 3, px, filter)).unwrap();
            assert_eq!((p.width, p.height, p.channels), (5, 3, 4));
            assert_eq!(p.data, want, "filter {filter}");
        }
    }

    #[test]
    fn what_is_not_a_usable_png_is_refused_with_a_reason() {
        assert!(decode(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
            .unwrap_err()
            .contains("not a PNG"));
        let mut big = encode_rgba(2, 2, |_, _| [0, 0, 0, 255], 0);
        big.resize(MAX_BYTES + 1, 0);
        assert!(decode(&big).unwrap_err().contains("at most"));
        let mut cut = encode_rgba(2, 2, |_, _| [0, 0, 0, 255], 0);
        cut.truncate(cut.len() - 20);
        assert!(decode(&cut).is_err());
        // A 16-bit header.
        let mut sixteen = encode_rgba(2, 2, |_, _| [0, 0, 0, 255], 0);
        sixteen[8 + 8 + 8] = 16;
        assert!(decode(&sixteen).unwrap_err().contains("16-bit"));
    }
}
