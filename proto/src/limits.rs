//! Sizes both ends of the socket agree on: the largest request message the daemon accepts,
//! derived from its picture limit, and the largest input file the CLI reads.
//!
//! gRPC's default of 4 MiB per message is far below what a legitimate img2img request at the
//! largest allowed size carries (a 2048² PNG can be 12 MiB, 16-bit ones 32 MiB), so the daemon
//! raises its limit to exactly what its `max_pixels` can need, no more.

/// Bytes a picture file of `pixels` pixels can need in the worst case: 16-bit RGBA stored
/// without compression (8 bytes a pixel), plus headers, row filters and metadata chunks.
pub fn max_picture_bytes(pixels: u64) -> u64 {
    pixels.saturating_mul(8).saturating_add(1 << 20)
}

/// The largest `GenerateRequest` the daemon accepts when pictures may have `max_pixels` pixels
/// and prompts `max_prompt_chars` characters: an init image and a mask at the largest size,
/// initial noise (up to 16 latent channels at 1/8 of each side, `f32`), both prompts (4 bytes a
/// character at most) and a MiB for every other field.
pub fn max_request_bytes(max_pixels: u64, max_prompt_chars: usize) -> usize {
    let pictures = max_picture_bytes(max_pixels).saturating_mul(2);
    let noise = (max_pixels / 64).saturating_mul(16 * 4);
    let prompts = (max_prompt_chars as u64).saturating_mul(2 * 4);
    let total = pictures
        .saturating_add(noise)
        .saturating_add(prompts)
        .saturating_add(1 << 20);
    usize::try_from(total).unwrap_or(usize::MAX).max(DEFAULT_MESSAGE_BYTES)
}

/// gRPC's usual message limit; the daemon never accepts less.
pub const DEFAULT_MESSAGE_BYTES: usize = 4 << 20;

/// The largest picture or `.npy` file the CLI reads (checked before reading): beyond any
/// picture a daemon's default limits allow, and small enough that a mistaken path (a disk
/// image, `/dev/zero`) cannot exhaust the client's memory.
pub const MAX_INPUT_FILE_BYTES: u64 = 256 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_limit_holds_two_worst_case_pictures_and_noise() {
        let pixels = 2048 * 2048;
        let limit = max_request_bytes(pixels, 16_384) as u64;
        assert!(limit >= 2 * 8 * pixels + pixels, "{limit}");
        assert!(limit < 80 << 20, "no more than the pictures need: {limit}");
        assert_eq!(max_request_bytes(64 * 64, 100), DEFAULT_MESSAGE_BYTES);
        assert_eq!(max_request_bytes(u64::MAX, usize::MAX), usize::MAX);
        assert!(MAX_INPUT_FILE_BYTES >= max_picture_bytes(pixels));
    }
}
