// A relying party built on openid-client 5 (a certified OpenID Connect RP library), driven by
// tests/e2e/test_oidc_interop.py: one step per run, JSON in on stdin, JSON out on stdout.
//
//   start   discovery, then an authorization URL with PKCE S256, state and nonce
//   finish  the callback: openid-client checks iss (RFC 9207), state, exchanges the code and
//           validates the ID token itself (signature against the JWKS, iss, aud, azp, exp,
//           iat, nonce, at_hash); then UserInfo (sub must match), a refresh (new ID token,
//           same sub), a check that a wrong nonce and a swapped access token are refused,
//           and the end-session URL for RP-initiated logout.
'use strict';

const { Issuer, TokenSet, generators, custom } = require('openid-client');

custom.setHttpOptionsDefaults({ timeout: 10000 });

async function client(input) {
  const issuer = await Issuer.discover(input.issuer + '/.well-known/openid-configuration');
  if (issuer.metadata.issuer !== input.issuer) throw new Error('issuer mismatch');
  return new issuer.Client({
    client_id: input.client_id,
    client_secret: input.client_secret,
    redirect_uris: [input.redirect_uri],
    post_logout_redirect_uris: [input.post_logout_redirect_uri],
    response_types: ['code'],
    id_token_signed_response_alg: input.id_token_alg || 'ES256',
  });
}

async function refused(promise) {
  try {
    await promise;
  } catch (err) {
    return err.message;
  }
  return null;
}

async function start(input) {
  const rp = await client(input);
  const state = generators.state();
  const nonce = generators.nonce();
  const code_verifier = generators.codeVerifier();
  const url = rp.authorizationUrl({
    scope: input.scope,
    state,
    nonce,
    code_challenge: generators.codeChallenge(code_verifier),
    code_challenge_method: 'S256',
  });
  return { url, state, nonce, code_verifier };
}

async function finish(input) {
  const rp = await client(input);
  const params = rp.callbackParams(input.callback);
  const checks = { state: input.state, nonce: input.nonce, code_verifier: input.code_verifier };
  const tokens = await rp.callback(input.redirect_uri, params, checks);
  const claims = tokens.claims();
  const userinfo = await rp.userinfo(tokens);
  // The library's own ID token checks refuse a nonce it did not send, and an access token
  // the ID token's at_hash does not name.
  const wrongNonce = await refused(rp.validateIdToken(tokens, 'another-nonce', 'token'));
  const swapped = new TokenSet({ ...tokens, access_token: tokens.access_token + 'x' });
  const wrongAtHash = await refused(rp.validateIdToken(swapped, input.nonce, 'token'));
  const refreshed = await rp.refresh(tokens);
  const endSession = rp.endSessionUrl({
    id_token_hint: refreshed.id_token,
    post_logout_redirect_uri: input.post_logout_redirect_uri,
    state: 'bye',
  });
  return {
    claims,
    userinfo,
    access_token: tokens.access_token,
    refreshed_claims: refreshed.claims(),
    refreshed_access_token: refreshed.access_token,
    wrong_nonce: wrongNonce,
    wrong_at_hash: wrongAtHash,
    end_session_url: endSession,
  };
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const step = { start, finish }[input.step];
  if (!step) throw new Error('unknown step ' + input.step);
  process.stdout.write(JSON.stringify(await step(input)) + '\n');
}

main().catch((err) => {
  process.stderr.write((err && err.stack) || String(err));
  process.stderr.write('\n');
  process.exit(1);
});
