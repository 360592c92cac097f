// A DPoP client not written here: oauth4webapi (panva), driven by tests/e2e/test_dpop_interop.py.
// Gets a DPoP-bound token from keystile with client credentials, calls an API protected by
// keystile's SDK with it, then sends the same token without its key. Prints one JSON object.
import * as oauth from 'oauth4webapi'

const env = process.env
const issuer = new URL(env.ISSUER)
const insecure = { [oauth.allowInsecureRequests]: true } // loopback http in the test

async function retryingNonce(fn) {
  try {
    return await fn()
  } catch (err) {
    if (oauth.isDPoPNonceError(err)) return await fn() // RFC 9449 §8, §9: retry with the nonce
    throw err
  }
}

const as = await oauth.processDiscoveryResponse(
  issuer,
  await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure }),
)
const client = { client_id: env.CLIENT_ID }
const keyPair = await oauth.generateKeyPair(env.ALG || 'ES256')
const DPoP = oauth.DPoP(client, keyPair)
const out = { dpop_algs: as.dpop_signing_alg_values_supported }

const token = await retryingNonce(async () => {
  const response = await oauth.clientCredentialsGrantRequest(
    as, client, oauth.ClientSecretBasic(env.CLIENT_SECRET), { scope: 'read' }, { DPoP, ...insecure },
  )
  return oauth.processClientCredentialsResponse(as, client, response)
})
out.token_type = token.token_type
out.jkt = await DPoP.calculateThumbprint()

const api = new URL(env.API_URL)
const response = await retryingNonce(async () => {
  const r = await oauth.protectedResourceRequest(
    token.access_token, 'GET', api, new Headers(), null, { DPoP, ...insecure },
  )
  return r
})
out.api_status = response.status
out.api_body = await response.text()

// The token copied, without the key: as Bearer, and as DPoP with no proof.
for (const scheme of ['Bearer', 'DPoP']) {
  const r = await fetch(api, { headers: { authorization: `${scheme} ${token.access_token}` } })
  out[`copied_${scheme.toLowerCase()}_status`] = r.status
  out[`copied_${scheme.toLowerCase()}_challenge`] = r.headers.get('www-authenticate')
}
console.log(JSON.stringify(out))
