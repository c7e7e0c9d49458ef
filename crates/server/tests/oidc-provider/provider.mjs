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
//
// Sign-in clients, when $SIGNIN_REDIRECT_URIS (comma-separated) is set; each
// may redirect to any of those URIs, and uses the authorization code flow:
//   signin-basic  client_secret_basic, secret "basic-secret"
//   signin-post   client_secret_post, secret "post-secret"
//   signin-jwt    private_key_jwt, with the public keys of the certificates
//                 whose PEM files $SIGNIN_CERTS (comma-separated) names
// Users sign in without a page: the interaction logs in the account
// `GET /test/login-as?sub=<id>` chose last (default "alice") and consents
// to whatever was asked. Accounts have claims sub, email <id>@example.org
// (verified), name, given_name.
import http from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const kid = process.env.KID || 'k1';

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
if (process.env.KEY_PEM_OUT) {
  writeFileSync(process.env.KEY_PEM_OUT, privateKey.export({ format: 'pem', type: 'pkcs8' }));
}
const signing = { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };

const redirectUris = (process.env.SIGNIN_REDIRECT_URIS || '').split(',').filter(Boolean);
const signinKeys = (process.env.SIGNIN_CERTS || '').split(',').filter(Boolean)
  .map((path) => ({ ...new X509Certificate(readFileSync(path)).publicKey.export({ format: 'jwk' }), use: 'sig' }));
const signinClients = redirectUris.length === 0 ? [] : [
  { client_id: 'signin-basic', client_secret: 'basic-secret', token_endpoint_auth_method: 'client_secret_basic' },
  { client_id: 'signin-post', client_secret: 'post-secret', token_endpoint_auth_method: 'client_secret_post' },
  { client_id: 'signin-jwt', token_endpoint_auth_method: 'private_key_jwt', jwks: { keys: signinKeys } },
].map((client) => ({
  ...client,
  grant_types: ['authorization_code'],
  response_types: ['code'],
  redirect_uris: redirectUris,
  scope: 'openid email profile',
}));
let nextLogin = 'alice';

const server = http.createServer();
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  jwks: { keys: [signing] },
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, email: `${sub}@example.org`, email_verified: true, name: `${sub} Example`, given_name: sub }),
  }),
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'given_name'] },
  conformIdTokenClaims: false,
  clients: [
    ...signinClients,
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
  scopes: ['openid', 'email', 'profile', 'read', 'write'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Sign-in clients get no resource: their access token is for userinfo.
      defaultResource: (ctx, client) => (client.clientId.startsWith('signin-') ? undefined : 'urn:fhirbox:jwt'),
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
const handle = provider.callback();
server.on('request', async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/test/login-as') {
      nextLogin = url.searchParams.get('sub');
      res.end('ok');
      return;
    }
    if (url.pathname.startsWith('/interaction/')) {
      const details = await provider.interactionDetails(req, res);
      let result;
      if (details.prompt.name === 'login') {
        result = { login: { accountId: nextLogin } };
      } else {
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
        const missing = details.prompt.details;
        if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
        if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
        for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
          grant.addResourceScope(indicator, scopes.join(' '));
        }
        result = { consent: { grantId: await grant.save() } };
      }
      await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
      return;
    }
    handle(req, res);
  } catch (err) {
    console.error('test handler', err);
    res.statusCode = 500;
    res.end(String(err));
  }
});
console.log(JSON.stringify({ issuer, port: server.address().port }));
