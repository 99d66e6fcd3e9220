/* Strato: dropbear's curve25519.c (TweetNaCl-derived X25519 and Ed25519) replaced by calls
 * to libsodium's ref10 code, which is several times faster: under QEMU's TCG an SSH login's
 * key exchange, host key signature and ed25519 user key check cost a minimal guest about a
 * fifth of the login's CPU with TweetNaCl. Same interface (curve25519.h), same results:
 * X25519 clamps the scalar and ignores the point's top bit as TweetNaCl does; Ed25519 is
 * deterministic (RFC 8032), so signatures are byte for byte the same. libsodium's verify is
 * stricter (it rejects a non-canonical S and small-order keys and R), as OpenSSH's is.
 * sodium_init() is not called: libsodium then uses its portable ref10 code everywhere. */

#include "includes.h"
#include "dbrandom.h"
#include "curve25519.h"

#include <sodium.h>

#if DROPBEAR_CURVE25519
void dropbear_curve25519_scalarmult(unsigned char *q, const unsigned char *n, const unsigned char *p)
{
	/* libsodium answers -1 for an all-zero result, which it has written to q all the same:
	 * the key exchange checks for it itself, as it does with TweetNaCl. */
	(void)crypto_scalarmult_curve25519(q, n, p);
}
#endif

#if DROPBEAR_ED25519
void dropbear_ed25519_make_key(unsigned char *pk, unsigned char *sk)
{
	unsigned char full[crypto_sign_SECRETKEYBYTES];

	genrandom(sk, 32);
	crypto_sign_seed_keypair(pk, full, sk);
	sodium_memzero(full, sizeof(full));
}

void dropbear_ed25519_sign(const unsigned char *m, unsigned long mlen,
			  unsigned char *s, unsigned long *slen,
			  const unsigned char *sk, const unsigned char *pk)
{
	/* libsodium's secret key is the seed followed by the public key. */
	unsigned char full[crypto_sign_SECRETKEYBYTES];
	unsigned long long len = 0;

	memcpy(full, sk, 32);
	memcpy(full + 32, pk, 32);
	crypto_sign_detached(s, &len, m, mlen, full);
	sodium_memzero(full, sizeof(full));
	*slen = (unsigned long)len;
}

#if DROPBEAR_SIGNKEY_VERIFY
int dropbear_ed25519_verify(const unsigned char *m, unsigned long mlen,
			    const unsigned char *s, unsigned long slen,
			    const unsigned char *pk)
{
	if (slen < crypto_sign_BYTES) {
		return -1;
	}
	return crypto_sign_verify_detached(s, m, mlen, pk) == 0 ? 0 : -1;
}
#endif /* DROPBEAR_SIGNKEY_VERIFY */
#endif /* DROPBEAR_ED25519 */
