/** The API's version, in the OpenAPI document and in /v1/status. */
export const API_VERSION = '0.1.0';
