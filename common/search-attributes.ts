/**
 * Custom search attributes the project registers on its namespace, so that
 * `temporal workflow list --query 'LabwrightResource="home"'` finds a resource's runs.
 */
import { defineSearchAttributeKey } from '@temporalio/common';

export const RESOURCE_KEY = defineSearchAttributeKey('LabwrightResource', 'KEYWORD');
export const STEP_KEY = defineSearchAttributeKey('LabwrightStep', 'KEYWORD');

export const SEARCH_ATTRIBUTE_KEYS = [RESOURCE_KEY, STEP_KEY];
