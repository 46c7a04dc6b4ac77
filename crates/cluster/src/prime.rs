//! Exact primality for every `i64`, and a sieve to check it against.
//!
//! Deterministic Miller-Rabin: the seven bases {2, 325, 9375, 28178, 450775, 9780504,
//! 1795265022} (Jim Sinclair, 2011) have no common strong pseudoprime below 2^64, so the
//! answer is exact for all of `u64` (see <https://miller-rabin.appspot.com/>). Small
//! factors are removed by trial division first, which decides most composites at once.

/// Whether `n` is prime. Negative numbers, 0 and 1 are not.
pub fn is_prime(n: i64) -> bool {
    if n < 2 {
        return false;
    }
    is_prime_u64(n as u64)
}

const SMALL: [u64; 15] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47];
const BASES: [u64; 7] = [2, 325, 9375, 28178, 450775, 9780504, 1795265022];

pub fn is_prime_u64(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    for p in SMALL {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    if n < 53 * 53 {
        return true;
    }
    let d = (n - 1) >> (n - 1).trailing_zeros();
    let s = (n - 1).trailing_zeros();
    'bases: for a in BASES {
        let a = a % n;
        if a == 0 {
            continue;
        }
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((a as u128 * b as u128) % m as u128) as u64
}

fn pow_mod(mut a: u64, mut e: u64, m: u64) -> u64 {
    let mut r = 1u64;
    while e > 0 {
        if e & 1 == 1 {
            r = mul_mod(r, a, m);
        }
        a = mul_mod(a, a, m);
        e >>= 1;
    }
    r
}

/// The primes in `lo..=hi` by a segmented sieve of Eratosthenes (the reference the tests
/// compare against; independent of Miller-Rabin). Meant for ranges of a few million.
pub fn sieve(lo: i64, hi: i64) -> Vec<i64> {
    let lo = lo.max(2);
    if hi < lo {
        return Vec::new();
    }
    let root = (hi as f64).sqrt() as i64 + 1;
    let mut small = vec![true; root as usize + 1];
    let mut base = Vec::new();
    for i in 2..=root {
        if small[i as usize] {
            base.push(i);
            let mut j = i * i;
            while j <= root {
                small[j as usize] = false;
                j += i;
            }
        }
    }
    let mut seg = vec![true; (hi - lo + 1) as usize];
    for p in base {
        let start = (p * p).max((lo + p - 1) / p * p);
        let mut j = start;
        while j <= hi {
            seg[(j - lo) as usize] = false;
            j += p;
        }
    }
    seg.iter().enumerate().filter(|(_, &v)| v).map(|(i, _)| lo + i as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_sieve_below_two_million() {
        let want = sieve(-10, 2_000_000);
        let got: Vec<i64> = (-10..=2_000_000).filter(|&n| is_prime(n)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn agrees_with_the_sieve_on_a_window_near_2_pow_40() {
        let lo = (1i64 << 40) - 100_000;
        let want = sieve(lo, lo + 200_000);
        let got: Vec<i64> = (lo..=lo + 200_000).filter(|&n| is_prime(n)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn carmichael_numbers_and_strong_pseudoprimes_are_composite() {
        // Carmichael numbers (OEIS A002997), and strong pseudoprimes to several small
        // bases at once (A014233: the least to bases 2..=p for p = 3..=41).
        for n in [
            561i64,
            1105,
            1729,
            2465,
            2821,
            6601,
            8911,
            41041,
            825265,
            321197185,
            5394826801,
            232250619601,
            9746347772161,
            2047,
            1373653,
            25326001,
            3215031751,
            2152302898747,
            3474749660383,
            341550071728321,
            3825123056546413051,
        ] {
            assert!(!is_prime(n), "{n} is composite");
        }
        // The product of two large primes, and squares of primes.
        assert!(!is_prime(4294967291 * 2147483647));
        assert!(!is_prime(3037000493 * 3037000493));
    }

    #[test]
    fn large_primes_are_prime() {
        for n in [
            2147483647i64,       // 2^31 - 1
            2305843009213693951, // 2^61 - 1
            9223372036854775783, // largest prime below 2^63
            4611686018427387847, // largest prime below 2^62
            1000000000000000003,
            999999999999999989,
        ] {
            assert!(is_prime(n), "{n} is prime");
        }
        assert!(!is_prime(i64::MAX));
        assert!(!is_prime(i64::MIN));
    }

    #[test]
    fn full_u64_range_edges() {
        assert!(is_prime_u64(18446744073709551557)); // largest prime below 2^64
        assert!(!is_prime_u64(u64::MAX));
    }
}
