// A real OpenID provider for fhirbox's integration tests (npm oidc-provider).
// It listens on 127.0.0.1:$PORT (0 = any free port) and prints one JSON line,
// {"issuer": …, "port": …}, once it is ready. It signs with a fresh RSA key
// whose `kid` is $KID, and writes that key's PKCS#8 PEM to $KEY_PEM_OUT (when
// set) so a test can mint tokens an ID token would look like; $TOKEN_TTL sets
// the access tokens' lifetime and $JWKS_DELAY_MS delays each key-set answer.
//
// Clients:
//   svc      client_credentials, client_secret_basic, secret "svc-secret";
//            resource urn:fhirbox:jwt gives JWT access tokens (typ at+jwt),
//            resource urn:fhirbox:opaque gives opaque ones.
//   fhirbox  the resource server: introspects with secret $RS_SECRET
//            (default "rs-secret").
//   fhirbox2 a second introspecting client, secret "rs-secret-2".
import http from 'node:http';
import { writeFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const kid = process.env.KID || 'k1';

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
if (process.env.KEY_PEM_OUT) {
  writeFileSync(process.env.KEY_PEM_OUT, privateKey.export({ format: 'pem', type: 'pkcs8' }));
}
const signing = { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };

const server = http.createServer();
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  jwks: { keys: [signing] },
  clients: [
    {
      client_id: 'svc',
      client_secret: 'svc-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'read write',
    },
    {
      client_id: 'fhirbox',
      client_secret: process.env.RS_SECRET || 'rs-secret',
      grant_types: [],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'fhirbox2',
      client_secret: 'rs-secret-2',
      grant_types: [],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  scopes: ['openid', 'read', 'write'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'urn:fhirbox:jwt',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        const common = { scope: 'read write', accessTokenTTL: Number(process.env.TOKEN_TTL || 300) };
        if (resource === 'urn:fhirbox:jwt') {
          return { ...common, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
        }
        if (resource === 'urn:fhirbox:opaque') {
          return { ...common, accessTokenFormat: 'opaque' };
        }
        throw new errors.InvalidTarget();
      },
    },
  },
});
// $JWKS_DELAY_MS holds each key-set answer back, so concurrent fetches overlap.
const jwksDelay = Number(process.env.JWKS_DELAY_MS || 0);
provider.use(async (ctx, next) => {
  if (jwksDelay && ctx.path === '/jwks') {
    await new Promise((resolve) => setTimeout(resolve, jwksDelay));
  }
  await next();
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
server.on('request', provider.callback());
console.log(JSON.stringify({ issuer, port: server.address().port }));
